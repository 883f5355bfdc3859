package dev.keybus.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;

import com.azure.messaging.servicebus.ServiceBusClientBuilder;
import com.azure.messaging.servicebus.ServiceBusException;
import com.azure.messaging.servicebus.ServiceBusMessage;
import com.azure.messaging.servicebus.ServiceBusReceivedMessage;
import com.azure.messaging.servicebus.ServiceBusReceiverClient;
import com.azure.messaging.servicebus.ServiceBusSenderClient;
import com.azure.messaging.servicebus.ServiceBusTransactionContext;
import com.azure.messaging.servicebus.models.CompleteOptions;
import java.time.Duration;
import java.util.List;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;

/** Transactions (createTransaction / commit / rollback) of the Java SDK, on the durable store. */
class TransactionTest extends BrokerTest {
    @Override
    protected String entities() {
        return "[[queues]]\nname = \"q-tx-commit\"\n\n[[queues]]\nname = \"q-tx-rollback\"\nlock_duration = \"2s\"\n\n"
            + "[[queues]]\nname = \"q-tx-unknown\"\n";
    }

    @Override
    protected boolean onDisk() {
        return true;
    }

    private static List<String> bodies(List<ServiceBusReceivedMessage> msgs) {
        return msgs.stream().map(m -> m.getBody().toString()).sorted().collect(Collectors.toList());
    }

    @Test
    void sendAndCompleteAreCommittedTogether() {
        ServiceBusClientBuilder shared = builder();
        try (ServiceBusSenderClient sender = shared.sender().queueName("q-tx-commit").buildClient();
             ServiceBusReceiverClient receiver = shared.receiver().queueName("q-tx-commit").disableAutoComplete().buildClient()) {
            sender.sendMessage(new ServiceBusMessage("input"));
            ServiceBusReceivedMessage input = receive(receiver, 1, Duration.ofSeconds(10)).get(0);

            ServiceBusTransactionContext tx = sender.createTransaction();
            assertNotNull(tx.getTransactionId());
            sender.sendMessage(new ServiceBusMessage("output"), tx);
            receiver.complete(input, new CompleteOptions().setTransactionContext(tx));
            // before the commit: the output is invisible and the input still there (locked)
            assertEquals(List.of("input"), bodies(receiver.peekMessages(10).stream().collect(Collectors.toList())));
            sender.commitTransaction(tx);

            List<ServiceBusReceivedMessage> after = receive(receiver, 2, Duration.ofSeconds(5));
            assertEquals(List.of("output"), bodies(after));
            after.forEach(receiver::complete);
        }
    }

    @Test
    void aRolledBackTransactionLeavesNoTrace() {
        ServiceBusClientBuilder shared = builder();
        try (ServiceBusSenderClient sender = shared.sender().queueName("q-tx-rollback").buildClient();
             ServiceBusReceiverClient receiver = shared.receiver().queueName("q-tx-rollback").disableAutoComplete().buildClient()) {
            sender.sendMessage(new ServiceBusMessage("kept"));
            ServiceBusReceivedMessage kept = receive(receiver, 1, Duration.ofSeconds(10)).get(0);

            ServiceBusTransactionContext tx = sender.createTransaction();
            sender.sendMessage(new ServiceBusMessage("discarded"), tx);
            receiver.complete(kept, new CompleteOptions().setTransactionContext(tx));
            sender.rollbackTransaction(tx);

            // nothing was sent, and the message whose completion was rolled back is still
            // there: locked until its lock (2 s) runs out, as Service Bus does
            List<ServiceBusReceivedMessage> again = receive(receiver, 2, Duration.ofSeconds(8));
            assertEquals(List.of("kept"), bodies(again));
            assertEquals(1, again.get(0).getDeliveryCount());
            again.forEach(receiver::complete);
        }
    }

    @Test
    void dischargingAnEndedTransactionFailsWithUnknownId() {
        try (ServiceBusSenderClient sender = builder().sender().queueName("q-tx-unknown").buildClient()) {
            ServiceBusTransactionContext tx = sender.createTransaction();
            sender.commitTransaction(tx);
            // the transaction has ended: discharging it again names an unknown id
            ServiceBusException e = assertThrows(ServiceBusException.class, () -> sender.commitTransaction(tx));
            assertEquals(true, String.valueOf(e.getMessage()).contains("unknown"), e.getMessage());
        }
    }
}

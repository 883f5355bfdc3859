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
            + "[[queues]]\nname = \"q-tx-unknown\"\n\n"
            + "[[queues]]\nname = \"q-tx-via-in\"\n\n[[queues]]\nname = \"q-tx-via-out\"\n\n"
            + "[[topics]]\nname = \"tp-tx-via\"\n[[topics.subscriptions]]\nname = \"all\"\n";
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
    void crossEntityTransactionSendsViaTheFirstEntity() {
        // The first entity a cross-entity builder touches is the "via" entity: here the queue
        // the input is received from; the later senders send via it.
        ServiceBusClientBuilder shared = builder().enableCrossEntityTransactions();
        try (ServiceBusReceiverClient receiver = shared.receiver().queueName("q-tx-via-in").disableAutoComplete().buildClient();
             ServiceBusSenderClient input = shared.sender().queueName("q-tx-via-in").buildClient();
             ServiceBusSenderClient toQueue = shared.sender().queueName("q-tx-via-out").buildClient();
             ServiceBusSenderClient toTopic = shared.sender().topicName("tp-tx-via").buildClient()) {
            input.sendMessage(new ServiceBusMessage("order"));
            ServiceBusReceivedMessage order = receive(receiver, 1, Duration.ofSeconds(10)).get(0);

            ServiceBusTransactionContext tx = toQueue.createTransaction();
            receiver.complete(order, new CompleteOptions().setTransactionContext(tx));
            toQueue.sendMessage(new ServiceBusMessage("shipment"), tx);
            toTopic.sendMessage(new ServiceBusMessage("event"), tx);
            try (ServiceBusReceiverClient out = builder().receiver().queueName("q-tx-via-out").buildClient()) {
                assertEquals(0, out.peekMessages(5).stream().count(), "sent before the commit");
            }
            toQueue.commitTransaction(tx);
        }
        try (ServiceBusReceiverClient in = builder().receiver().queueName("q-tx-via-in").buildClient();
             ServiceBusReceiverClient out = builder().receiver().queueName("q-tx-via-out").buildClient();
             ServiceBusReceiverClient sub = builder().receiver().topicName("tp-tx-via").subscriptionName("all").buildClient()) {
            assertEquals(List.of(), bodies(in.peekMessages(5).stream().collect(Collectors.toList())));
            assertEquals(List.of("shipment"), bodies(out.peekMessages(5).stream().collect(Collectors.toList())));
            assertEquals(List.of("event"), bodies(sub.peekMessages(5).stream().collect(Collectors.toList())));
        }
    }

    @Test
    void withoutCrossEntityATransactionSpanningTwoEntitiesCannotCommit() {
        ServiceBusClientBuilder shared = builder();
        try (ServiceBusSenderClient a = shared.sender().queueName("q-tx-via-in").buildClient();
             ServiceBusSenderClient b = shared.sender().queueName("q-tx-via-out").buildClient()) {
            ServiceBusTransactionContext tx = a.createTransaction();
            a.sendMessage(new ServiceBusMessage("first"), tx);
            // refused by the broker; the Java SDK does not look at the outcome of a
            // transactional send, so the refusal surfaces at the commit
            b.sendMessage(new ServiceBusMessage("second"), tx);
            ServiceBusException e = assertThrows(ServiceBusException.class, () -> a.commitTransaction(tx));
            assertEquals(true, String.valueOf(e.getMessage()).contains("rolled back"), e.getMessage());
        }
        try (ServiceBusReceiverClient in = builder().receiver().queueName("q-tx-via-in").buildClient()) {
            assertEquals(List.of(), bodies(in.peekMessages(5).stream().collect(Collectors.toList())));
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

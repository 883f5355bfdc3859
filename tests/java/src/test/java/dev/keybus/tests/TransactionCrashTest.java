package dev.keybus.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;

import com.azure.messaging.servicebus.ServiceBusClientBuilder;
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

/**
 * {@code kill -9} of the broker around a transaction's commit (durable store): killed before
 * the commit, none of its operations happened; after the commit, all of them.
 */
class TransactionCrashTest extends BrokerTest {
    @Override
    protected String entities() {
        return "[[queues]]\nname = \"q-crash-before\"\n\n[[queues]]\nname = \"q-crash-after\"\n";
    }

    @Override
    protected boolean onDisk() {
        return true;
    }

    private List<String> peekBodies(String queue) {
        try (ServiceBusReceiverClient r = builder().receiver().queueName(queue).buildClient()) {
            return r.peekMessages(10).stream().map(m -> m.getBody().toString()).sorted().collect(Collectors.toList());
        }
    }

    /** Send "input", then in one transaction send "output" and complete "input". */
    private ServiceBusTransactionContext sendAndCompleteInATransaction(ServiceBusSenderClient sender, ServiceBusReceiverClient receiver) {
        sender.sendMessage(new ServiceBusMessage("input"));
        ServiceBusReceivedMessage input = receive(receiver, 1, Duration.ofSeconds(10)).get(0);
        ServiceBusTransactionContext tx = sender.createTransaction();
        sender.sendMessage(new ServiceBusMessage("output"), tx);
        receiver.complete(input, new CompleteOptions().setTransactionContext(tx));
        return tx;
    }

    @Test
    void killedBeforeTheCommitNoneHappened() throws Exception {
        ServiceBusClientBuilder shared = builder();
        ServiceBusSenderClient sender = shared.sender().queueName("q-crash-before").buildClient();
        ServiceBusReceiverClient receiver = shared.receiver().queueName("q-crash-before").disableAutoComplete().buildClient();
        sendAndCompleteInATransaction(sender, receiver);
        broker.crashAndRestart();
        sender.close();
        receiver.close();
        assertEquals(List.of("input"), peekBodies("q-crash-before"));
    }

    @Test
    void killedAfterTheCommitAllHappened() throws Exception {
        ServiceBusClientBuilder shared = builder();
        ServiceBusSenderClient sender = shared.sender().queueName("q-crash-after").buildClient();
        ServiceBusReceiverClient receiver = shared.receiver().queueName("q-crash-after").disableAutoComplete().buildClient();
        ServiceBusTransactionContext tx = sendAndCompleteInATransaction(sender, receiver);
        sender.commitTransaction(tx);
        broker.crashAndRestart();
        sender.close();
        receiver.close();
        assertEquals(List.of("output"), peekBodies("q-crash-after"));
    }
}

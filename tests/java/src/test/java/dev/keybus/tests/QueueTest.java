package dev.keybus.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.azure.messaging.servicebus.ServiceBusMessage;
import com.azure.messaging.servicebus.ServiceBusMessageBatch;
import com.azure.messaging.servicebus.ServiceBusReceivedMessage;
import com.azure.messaging.servicebus.ServiceBusReceiverClient;
import com.azure.messaging.servicebus.ServiceBusSenderClient;
import com.azure.messaging.servicebus.models.DeadLetterOptions;
import com.azure.messaging.servicebus.models.ServiceBusMessageState;
import com.azure.messaging.servicebus.models.ServiceBusReceiveMode;
import com.azure.messaging.servicebus.models.SubQueue;
import java.time.Duration;
import java.time.OffsetDateTime;
import java.util.List;
import java.util.Map;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;

/** Queue behaviours with the synchronous sender and receiver. */
class QueueTest extends BrokerTest {
    @Override
    protected String entities() {
        StringBuilder toml = new StringBuilder();
        for (String q : List.of("q-basic", "q-batch", "q-abandon", "q-dlq", "q-peek", "q-schedule", "q-defer", "q-rad")) {
            toml.append("[[queues]]\nname = \"").append(q).append("\"\n");
            if (q.equals("q-abandon")) {
                toml.append("max_delivery_count = 2\n");
            }
            toml.append('\n');
        }
        return toml.toString();
    }

    private ServiceBusSenderClient sender(String queue) {
        return builder().sender().queueName(queue).buildClient();
    }

    private ServiceBusReceiverClient receiver(String queue) {
        return builder().receiver().queueName(queue).disableAutoComplete().buildClient();
    }

    @Test
    void sendReceiveCompleteKeepsBodyAndProperties() {
        try (ServiceBusSenderClient sender = sender("q-basic"); ServiceBusReceiverClient receiver = receiver("q-basic")) {
            ServiceBusMessage msg = new ServiceBusMessage("hello java")
                .setMessageId("m-1").setSubject("greeting").setContentType("text/plain")
                .setCorrelationId("c-1");
            msg.getApplicationProperties().put("region", "EU");
            msg.getApplicationProperties().put("priority", 3L);
            sender.sendMessage(msg);
            List<ServiceBusReceivedMessage> got = receive(receiver, 1, Duration.ofSeconds(10));
            assertEquals(1, got.size());
            ServiceBusReceivedMessage m = got.get(0);
            assertEquals("hello java", m.getBody().toString());
            assertEquals("m-1", m.getMessageId());
            assertEquals("greeting", m.getSubject());
            assertEquals("text/plain", m.getContentType());
            assertEquals("c-1", m.getCorrelationId());
            assertEquals("EU", m.getApplicationProperties().get("region"));
            assertEquals(3L, m.getApplicationProperties().get("priority"));
            assertEquals(0, m.getDeliveryCount(), "the wire's delivery-count: no prior attempt");
            assertTrue(m.getSequenceNumber() > 0);
            assertNotNull(m.getLockToken());
            receiver.complete(m);
            assertEquals(0, receiver.receiveMessages(1, Duration.ofSeconds(1)).stream().count());
        }
    }

    @Test
    void batchSendAndReceiveAndDeleteMode() {
        try (ServiceBusSenderClient sender = sender("q-batch")) {
            ServiceBusMessageBatch batch = sender.createMessageBatch();
            for (int i = 0; i < 5; i++) {
                assertTrue(batch.tryAddMessage(new ServiceBusMessage("b" + i)));
            }
            sender.sendMessages(batch);
            try (ServiceBusReceiverClient receiver = builder().receiver().queueName("q-batch")
                .receiveMode(ServiceBusReceiveMode.RECEIVE_AND_DELETE).buildClient()) {
                List<ServiceBusReceivedMessage> got = receive(receiver, 5, Duration.ofSeconds(10));
                assertEquals(List.of("b0", "b1", "b2", "b3", "b4"),
                    got.stream().map(m -> m.getBody().toString()).collect(Collectors.toList()));
                assertEquals(0, receiver.receiveMessages(1, Duration.ofSeconds(1)).stream().count());
            }
        }
    }

    @Test
    void abandonRedeliversAndMaxDeliveryCountDeadLetters() {
        try (ServiceBusSenderClient sender = sender("q-abandon"); ServiceBusReceiverClient receiver = receiver("q-abandon");
             ServiceBusReceiverClient dlq = builder().receiver().queueName("q-abandon").subQueue(SubQueue.DEAD_LETTER_QUEUE)
                 .disableAutoComplete().buildClient()) {
            sender.sendMessage(new ServiceBusMessage("again"));
            ServiceBusReceivedMessage first = receive(receiver, 1, Duration.ofSeconds(10)).get(0);
            assertEquals(0, first.getDeliveryCount());
            receiver.abandon(first);
            ServiceBusReceivedMessage second = receive(receiver, 1, Duration.ofSeconds(10)).get(0);
            assertEquals("again", second.getBody().toString());
            assertEquals(1, second.getDeliveryCount());
            receiver.abandon(second);
            ServiceBusReceivedMessage dead = receive(dlq, 1, Duration.ofSeconds(10)).get(0);
            assertEquals("again", dead.getBody().toString());
            assertEquals("MaxDeliveryCountExceeded", dead.getDeadLetterReason());
            dlq.complete(dead);
        }
    }

    @Test
    void deadLetterWithReasonAndDescription() {
        try (ServiceBusSenderClient sender = sender("q-dlq"); ServiceBusReceiverClient receiver = receiver("q-dlq");
             ServiceBusReceiverClient dlq = builder().receiver().queueName("q-dlq").subQueue(SubQueue.DEAD_LETTER_QUEUE)
                 .disableAutoComplete().buildClient()) {
            sender.sendMessage(new ServiceBusMessage("poison").setMessageId("p-1"));
            ServiceBusReceivedMessage m = receive(receiver, 1, Duration.ofSeconds(10)).get(0);
            receiver.deadLetter(m, new DeadLetterOptions().setDeadLetterReason("bad-input")
                .setDeadLetterErrorDescription("cannot parse").setPropertiesToModify(Map.of("stage", "parse")));
            assertEquals(0, receiver.receiveMessages(1, Duration.ofSeconds(1)).stream().count());
            ServiceBusReceivedMessage dead = receive(dlq, 1, Duration.ofSeconds(10)).get(0);
            assertEquals("p-1", dead.getMessageId());
            assertEquals("bad-input", dead.getDeadLetterReason());
            assertEquals("cannot parse", dead.getDeadLetterErrorDescription());
            assertEquals("parse", dead.getApplicationProperties().get("stage"));
            dlq.complete(dead);
        }
    }

    @Test
    void peekDoesNotLockAndWalksBySequenceNumber() {
        try (ServiceBusSenderClient sender = sender("q-peek"); ServiceBusReceiverClient receiver = receiver("q-peek")) {
            for (int i = 0; i < 3; i++) {
                sender.sendMessage(new ServiceBusMessage("p" + i));
            }
            List<ServiceBusReceivedMessage> peeked = receiver.peekMessages(3).stream().collect(Collectors.toList());
            assertEquals(List.of("p0", "p1", "p2"), peeked.stream().map(m -> m.getBody().toString()).collect(Collectors.toList()));
            ServiceBusReceivedMessage fromSecond = receiver.peekMessage(peeked.get(1).getSequenceNumber());
            assertEquals("p1", fromSecond.getBody().toString());
            // peeking locked nothing: all three are still receivable
            List<ServiceBusReceivedMessage> got = receive(receiver, 3, Duration.ofSeconds(10));
            assertEquals(3, got.size());
            got.forEach(receiver::complete);
        }
    }

    @Test
    void scheduleAndCancel() {
        try (ServiceBusSenderClient sender = sender("q-schedule"); ServiceBusReceiverClient receiver = receiver("q-schedule")) {
            OffsetDateTime soon = OffsetDateTime.now().plusSeconds(2);
            long kept = sender.scheduleMessage(new ServiceBusMessage("later"), soon);
            long cancelled = sender.scheduleMessage(new ServiceBusMessage("never"), soon);
            sender.cancelScheduledMessage(cancelled);
            ServiceBusReceivedMessage peeked = receiver.peekMessage(kept);
            assertEquals(ServiceBusMessageState.SCHEDULED, peeked.getState());
            assertEquals(0, receiver.receiveMessages(1, Duration.ofMillis(500)).stream().count(), "scheduled message delivered early");
            List<ServiceBusReceivedMessage> got = receive(receiver, 2, Duration.ofSeconds(8));
            assertEquals(List.of("later"), got.stream().map(m -> m.getBody().toString()).collect(Collectors.toList()));
            assertEquals(kept, got.get(0).getSequenceNumber());
            receiver.complete(got.get(0));
        }
    }

    @Test
    void deferThenReceiveDeferredBySequenceNumber() {
        try (ServiceBusSenderClient sender = sender("q-defer"); ServiceBusReceiverClient receiver = receiver("q-defer")) {
            sender.sendMessage(new ServiceBusMessage("deferred"));
            ServiceBusReceivedMessage m = receive(receiver, 1, Duration.ofSeconds(10)).get(0);
            long seq = m.getSequenceNumber();
            receiver.defer(m);
            assertEquals(0, receiver.receiveMessages(1, Duration.ofSeconds(1)).stream().count());
            ServiceBusReceivedMessage back = receiver.receiveDeferredMessage(seq);
            assertEquals("deferred", back.getBody().toString());
            assertEquals(ServiceBusMessageState.DEFERRED, back.getState());
            receiver.complete(back);
            assertEquals(0, receiver.peekMessages(5).stream().count());
        }
    }

    @Test
    void renewMessageLockExtendsLockedUntil() {
        try (ServiceBusSenderClient sender = sender("q-rad"); ServiceBusReceiverClient receiver = receiver("q-rad")) {
            sender.sendMessage(new ServiceBusMessage("renew me"));
            ServiceBusReceivedMessage m = receive(receiver, 1, Duration.ofSeconds(10)).get(0);
            OffsetDateTime before = m.getLockedUntil();
            OffsetDateTime after = receiver.renewMessageLock(m);
            assertTrue(!after.isBefore(before), "renewed lock ends before the first one");
            receiver.complete(m);
        }
    }
}

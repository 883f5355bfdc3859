package dev.keybus.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.azure.messaging.servicebus.ServiceBusMessage;
import com.azure.messaging.servicebus.ServiceBusProcessorClient;
import com.azure.messaging.servicebus.ServiceBusReceivedMessage;
import com.azure.messaging.servicebus.ServiceBusReceiverAsyncClient;
import com.azure.messaging.servicebus.ServiceBusReceiverClient;
import com.azure.messaging.servicebus.ServiceBusSenderAsyncClient;
import com.azure.messaging.servicebus.ServiceBusSenderClient;
import java.time.Duration;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import java.util.stream.IntStream;
import org.junit.jupiter.api.Test;

/** The asynchronous (Reactor) clients, the processor and the session processor. */
class AsyncAndProcessorTest extends BrokerTest {
    @Override
    protected String entities() {
        return "[[queues]]\nname = \"q-async\"\n\n[[queues]]\nname = \"q-proc\"\n\n"
            + "[[queues]]\nname = \"q-proc-sess\"\nrequires_session = true\n";
    }

    @Test
    void asyncSendReceiveComplete() {
        ServiceBusSenderAsyncClient sender = builder().sender().queueName("q-async").buildAsyncClient();
        ServiceBusReceiverAsyncClient receiver = builder().receiver().queueName("q-async").disableAutoComplete().buildAsyncClient();
        try {
            List<ServiceBusMessage> batch = IntStream.range(0, 4).mapToObj(i -> new ServiceBusMessage("x" + i)).collect(Collectors.toList());
            sender.sendMessages(batch).block(Duration.ofSeconds(20));
            // take() after the completions: cancelling the receive flux closes the link, and a
            // completion still in flight then never hears its acknowledgment
            List<String> got = receiver.receiveMessages()
                .concatMap(m -> receiver.complete(m).thenReturn(m.getBody().toString()))
                .take(4)
                .collectList()
                .block(Duration.ofSeconds(20));
            assertEquals(List.of("x0", "x1", "x2", "x3"), got);
            Long left = receiver.peekMessages(5).count().block(Duration.ofSeconds(10));
            assertEquals(0L, left);
        } finally {
            sender.close();
            receiver.close();
        }
    }

    @Test
    void processorCompletesEveryMessage() throws InterruptedException {
        int n = 6;
        CountDownLatch done = new CountDownLatch(n);
        Set<String> seen = ConcurrentHashMap.newKeySet();
        List<Throwable> errors = new CopyOnWriteArrayList<>();
        try (ServiceBusSenderClient sender = builder().sender().queueName("q-proc").buildClient()) {
            sender.sendMessages(IntStream.range(0, n).mapToObj(i -> new ServiceBusMessage("p" + i)).collect(Collectors.toList()));
        }
        ServiceBusProcessorClient processor = builder().processor().queueName("q-proc")
            .maxConcurrentCalls(2)
            .processMessage(ctx -> {
                seen.add(ctx.getMessage().getBody().toString());
                done.countDown();
            })
            .processError(ctx -> errors.add(ctx.getException()))
            .buildProcessorClient();
        processor.start();
        try (ServiceBusReceiverClient peeker = builder().receiver().queueName("q-proc").buildClient()) {
            assertTrue(done.await(20, TimeUnit.SECONDS), "processed only " + seen);
            // The processor completes a message after its handler returns: wait (while it
            // runs) until every completion reached the broker.
            long deadline = System.nanoTime() + Duration.ofSeconds(10).toNanos();
            long left = peeker.peekMessages(10, 1).stream().count();
            while (left > 0 && System.nanoTime() < deadline) {
                Thread.sleep(50);
                left = peeker.peekMessages(10, 1).stream().count();
            }
            assertEquals(0, left, "the processor did not complete every message");
        } finally {
            processor.close();
        }
        assertEquals(IntStream.range(0, n).mapToObj(i -> "p" + i).collect(Collectors.toSet()), seen);
        assertEquals(List.of(), errors);
    }

    @Test
    void sessionProcessorKeepsPerSessionOrder() throws InterruptedException {
        CountDownLatch done = new CountDownLatch(6);
        ConcurrentHashMap<String, List<String>> bySession = new ConcurrentHashMap<>();
        List<Throwable> errors = new CopyOnWriteArrayList<>();
        try (ServiceBusSenderClient sender = builder().sender().queueName("q-proc-sess").buildClient()) {
            for (int i = 0; i < 3; i++) {
                sender.sendMessage(new ServiceBusMessage("s1-" + i).setSessionId("s1"));
                sender.sendMessage(new ServiceBusMessage("s2-" + i).setSessionId("s2"));
            }
        }
        ServiceBusProcessorClient processor = builder().sessionProcessor().queueName("q-proc-sess")
            .maxConcurrentSessions(2)
            .processMessage(ctx -> {
                ServiceBusReceivedMessage m = ctx.getMessage();
                bySession.computeIfAbsent(m.getSessionId(), k -> new CopyOnWriteArrayList<>()).add(m.getBody().toString());
                done.countDown();
            })
            .processError(ctx -> errors.add(ctx.getException()))
            .buildProcessorClient();
        processor.start();
        try {
            assertTrue(done.await(30, TimeUnit.SECONDS), "processed only " + bySession);
        } finally {
            processor.close();
        }
        assertEquals(List.of("s1-0", "s1-1", "s1-2"), bySession.get("s1"));
        assertEquals(List.of("s2-0", "s2-1", "s2-2"), bySession.get("s2"));
        assertEquals(List.of(), errors);
    }
}

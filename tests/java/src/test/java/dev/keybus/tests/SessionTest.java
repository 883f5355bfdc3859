package dev.keybus.tests;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import com.azure.core.util.BinaryData;
import com.azure.messaging.servicebus.ServiceBusMessage;
import com.azure.messaging.servicebus.ServiceBusReceivedMessage;
import com.azure.messaging.servicebus.ServiceBusReceiverClient;
import com.azure.messaging.servicebus.ServiceBusSenderClient;
import com.azure.messaging.servicebus.ServiceBusSessionReceiverClient;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;

/** Session-enabled queues with the session receiver: per-session order, session state, next session. */
class SessionTest extends BrokerTest {
    @Override
    protected String entities() {
        return "[[queues]]\nname = \"q-sess\"\nrequires_session = true\n\n"
            + "[[queues]]\nname = \"q-sess-next\"\nrequires_session = true\n";
    }

    @Test
    void acceptSessionReceivesOnlyItsMessagesInOrderAndKeepsState() {
        try (ServiceBusSenderClient sender = builder().sender().queueName("q-sess").buildClient();
             ServiceBusSessionReceiverClient sessions = builder().sessionReceiver().queueName("q-sess")
                 .disableAutoComplete().buildClient()) {
            for (int i = 0; i < 3; i++) {
                sender.sendMessage(new ServiceBusMessage("a" + i).setSessionId("alpha"));
                sender.sendMessage(new ServiceBusMessage("b" + i).setSessionId("beta"));
            }
            try (ServiceBusReceiverClient alpha = sessions.acceptSession("alpha")) {
                assertEquals("alpha", alpha.getSessionId());
                List<ServiceBusReceivedMessage> got = receive(alpha, 3, Duration.ofSeconds(10));
                assertEquals(List.of("a0", "a1", "a2"), got.stream().map(m -> m.getBody().toString()).collect(Collectors.toList()));
                got.forEach(m -> assertEquals("alpha", m.getSessionId()));
                got.forEach(alpha::complete);
                alpha.setSessionState("step-3".getBytes(StandardCharsets.UTF_8));
                assertArrayEquals("step-3".getBytes(StandardCharsets.UTF_8), alpha.getSessionState());
            }
            try (ServiceBusReceiverClient beta = sessions.acceptSession("beta")) {
                List<ServiceBusReceivedMessage> got = receive(beta, 3, Duration.ofSeconds(10));
                assertEquals(List.of("b0", "b1", "b2"), got.stream().map(m -> m.getBody().toString()).collect(Collectors.toList()));
                got.forEach(beta::complete);
            }
            try (ServiceBusReceiverClient alphaAgain = sessions.acceptSession("alpha")) {
                assertArrayEquals("step-3".getBytes(StandardCharsets.UTF_8), alphaAgain.getSessionState());
            }
        }
    }

    @Test
    void acceptNextSessionPicksASessionWithMessages() {
        try (ServiceBusSenderClient sender = builder().sender().queueName("q-sess-next").buildClient();
             ServiceBusSessionReceiverClient sessions = builder().sessionReceiver().queueName("q-sess-next")
                 .disableAutoComplete().buildClient()) {
            sender.sendMessage(new ServiceBusMessage(BinaryData.fromString("only")).setSessionId("s-42"));
            try (ServiceBusReceiverClient next = sessions.acceptNextSession()) {
                assertEquals("s-42", next.getSessionId());
                ServiceBusReceivedMessage m = receive(next, 1, Duration.ofSeconds(10)).get(0);
                assertEquals("only", m.getBody().toString());
                next.complete(m);
            }
        }
    }
}

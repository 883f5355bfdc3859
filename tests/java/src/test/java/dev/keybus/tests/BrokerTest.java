package dev.keybus.tests;

import com.azure.core.amqp.AmqpRetryMode;
import com.azure.core.amqp.AmqpRetryOptions;
import com.azure.messaging.servicebus.ServiceBusClientBuilder;
import com.azure.messaging.servicebus.ServiceBusReceivedMessage;
import com.azure.messaging.servicebus.ServiceBusReceiverClient;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.extension.ExtensionContext;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.api.extension.TestWatcher;

/**
 * One keybus process per test class (its entities from {@link #entities()}), stopped after the
 * class; a failing test prints the broker's stdout/stderr tail.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
public abstract class BrokerTest {
    /** Default wait of a receive call: short, so that empty receives return quickly. */
    protected static final Duration MAX_WAIT = Duration.ofSeconds(3);

    protected KeybusBroker broker;

    @RegisterExtension
    final TestWatcher diagnostics = new TestWatcher() {
        @Override
        public void testFailed(ExtensionContext context, Throwable cause) {
            if (broker != null) {
                System.err.println("FAILED " + context.getDisplayName() + "\n" + broker.diagnostics());
            }
        }
    };

    /** The TOML blocks ([[queues]], [[topics]]...) this class's broker declares. */
    protected abstract String entities();

    /** Whether this class's broker stores on disk (--data-dir) instead of in memory. */
    protected boolean onDisk() {
        return false;
    }

    /** Arguments added to {@code keybus serve} for this class's broker. */
    protected List<String> extraArgs() {
        return List.of();
    }

    @BeforeAll
    void startBroker() throws Exception {
        broker = KeybusBroker.start(KeybusBroker.config(entities()), onDisk(), extraArgs());
    }

    @AfterAll
    void stopBroker() throws Exception {
        if (broker != null) {
            broker.close();
        }
    }

    /** A client builder for this broker: a correct broker needs no retries, so failures are fast. */
    protected ServiceBusClientBuilder builder() {
        return new ServiceBusClientBuilder()
            .connectionString(broker.connectionString())
            .retryOptions(new AmqpRetryOptions()
                .setMode(AmqpRetryMode.FIXED)
                .setMaxRetries(1)
                .setDelay(Duration.ofMillis(200))
                .setTryTimeout(Duration.ofSeconds(15)));
    }

    /** Receive until {@code count} messages arrived or {@code total} elapsed. */
    protected static List<ServiceBusReceivedMessage> receive(ServiceBusReceiverClient receiver, int count, Duration total) {
        List<ServiceBusReceivedMessage> got = new ArrayList<>();
        long deadline = System.nanoTime() + total.toNanos();
        while (got.size() < count && System.nanoTime() < deadline) {
            receiver.receiveMessages(count - got.size(), MAX_WAIT).forEach(got::add);
        }
        return got;
    }
}

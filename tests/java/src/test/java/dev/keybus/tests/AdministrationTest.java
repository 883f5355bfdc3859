package dev.keybus.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.azure.core.exception.ResourceNotFoundException;
import com.azure.core.http.HttpClient;
import com.azure.core.http.HttpPipelinePosition;
import com.azure.core.http.netty.NettyAsyncHttpClientBuilder;
import com.azure.core.http.policy.HttpPipelinePolicy;
import com.azure.core.util.UrlBuilder;
import com.azure.messaging.servicebus.ServiceBusMessage;
import com.azure.messaging.servicebus.ServiceBusReceivedMessage;
import com.azure.messaging.servicebus.ServiceBusReceiverClient;
import com.azure.messaging.servicebus.ServiceBusSenderClient;
import com.azure.messaging.servicebus.administration.ServiceBusAdministrationClient;
import com.azure.messaging.servicebus.administration.ServiceBusAdministrationClientBuilder;
import com.azure.messaging.servicebus.administration.models.CreateQueueOptions;
import com.azure.messaging.servicebus.administration.models.CreateRuleOptions;
import com.azure.messaging.servicebus.administration.models.QueueProperties;
import com.azure.messaging.servicebus.administration.models.QueueRuntimeProperties;
import com.azure.messaging.servicebus.administration.models.RuleProperties;
import com.azure.messaging.servicebus.administration.models.SqlRuleFilter;
import io.netty.handler.ssl.SslContext;
import io.netty.handler.ssl.SslContextBuilder;
import java.time.Duration;
import java.util.List;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;
import reactor.core.publisher.Mono;

/**
 * The administration client ({@code ServiceBusAdministrationClient}, the ATOM API) over HTTPS,
 * trusting the broker's development CA. The client keeps only the host of the connection
 * string's endpoint and always dials port 443, so a pipeline policy points its requests at the
 * broker's HTTPS port, as one does for any service behind a non-default port.
 */
class AdministrationTest extends BrokerTest {
    @Override
    protected String entities() {
        return "[[queues]]\nname = \"q-admin-existing\"\n";
    }

    @Override
    protected List<String> extraArgs() {
        return List.of("--dev-tls", "--amqps-port", "0", "--https-port", "0");
    }

    private ServiceBusAdministrationClient admin() throws Exception {
        SslContext ssl = SslContextBuilder.forClient().trustManager(broker.caFile().toFile()).build();
        HttpClient http = new NettyAsyncHttpClientBuilder(
            reactor.netty.http.client.HttpClient.create().secure(spec -> spec.sslContext(ssl))).build();
        int port = broker.httpsPort();
        HttpPipelinePolicy toBrokerPort = new HttpPipelinePolicy() {
            @Override
            public Mono<com.azure.core.http.HttpResponse> process(com.azure.core.http.HttpPipelineCallContext context,
                                                                  com.azure.core.http.HttpPipelineNextPolicy next) {
                UrlBuilder url = UrlBuilder.parse(context.getHttpRequest().getUrl());
                url.setPort(port);
                context.getHttpRequest().setUrl(url.toString());
                return next.process();
            }

            @Override
            public HttpPipelinePosition getPipelinePosition() {
                return HttpPipelinePosition.PER_CALL;
            }
        };
        return new ServiceBusAdministrationClientBuilder()
            .connectionString("Endpoint=sb://localhost:" + port + ";SharedAccessKeyName=" + KeybusBroker.SAS_POLICY
                + ";SharedAccessKey=" + KeybusBroker.SAS_KEY)
            .httpClient(http)
            .addPolicy(toBrokerPort)
            .buildClient();
    }

    @Test
    void createUseAndDeleteAQueue() throws Exception {
        ServiceBusAdministrationClient admin = admin();
        QueueProperties created = admin.createQueue("q-admin-new", new CreateQueueOptions()
            .setLockDuration(Duration.ofSeconds(45)).setMaxDeliveryCount(4));
        assertEquals("q-admin-new", created.getName());
        QueueProperties got = admin.getQueue("q-admin-new");
        assertEquals(Duration.ofSeconds(45), got.getLockDuration());
        assertEquals(4, got.getMaxDeliveryCount());
        List<String> names = admin.listQueues().stream().map(QueueProperties::getName).collect(Collectors.toList());
        assertTrue(names.containsAll(List.of("q-admin-existing", "q-admin-new")), names.toString());

        // usable over AMQP at once, and its runtime counts follow
        try (ServiceBusSenderClient sender = builder().sender().queueName("q-admin-new").buildClient()) {
            sender.sendMessage(new ServiceBusMessage("via admin"));
        }
        QueueRuntimeProperties runtime = admin.getQueueRuntimeProperties("q-admin-new");
        assertEquals(1, runtime.getActiveMessageCount());
        try (ServiceBusReceiverClient receiver = builder().receiver().queueName("q-admin-new").disableAutoComplete().buildClient()) {
            ServiceBusReceivedMessage m = receive(receiver, 1, Duration.ofSeconds(10)).get(0);
            assertEquals("via admin", m.getBody().toString());
            receiver.complete(m);
        }

        admin.deleteQueue("q-admin-new");
        assertThrows(ResourceNotFoundException.class, () -> admin.getQueue("q-admin-new"));
    }

    @Test
    void topicSubscriptionAndSqlRule() throws Exception {
        ServiceBusAdministrationClient admin = admin();
        admin.createTopic("tp-admin");
        admin.createSubscription("tp-admin", "eu");
        // the Java SDK orders these (topic, rule, subscription)
        admin.createRule("tp-admin", "eu-only", "eu", new CreateRuleOptions(new SqlRuleFilter("region = 'EU'")));
        admin.deleteRule("tp-admin", "eu", "$Default");
        List<RuleProperties> rules = admin.listRules("tp-admin", "eu").stream().collect(Collectors.toList());
        assertEquals(List.of("eu-only"), rules.stream().map(RuleProperties::getName).collect(Collectors.toList()));
        assertEquals("region = 'EU'", ((SqlRuleFilter) rules.get(0).getFilter()).getSqlExpression());
        try (ServiceBusSenderClient sender = builder().sender().topicName("tp-admin").buildClient();
             ServiceBusReceiverClient eu = builder().receiver().topicName("tp-admin").subscriptionName("eu")
                 .disableAutoComplete().buildClient()) {
            ServiceBusMessage us = new ServiceBusMessage("us");
            us.getApplicationProperties().put("region", "US");
            ServiceBusMessage e = new ServiceBusMessage("eu");
            e.getApplicationProperties().put("region", "EU");
            sender.sendMessage(us);
            sender.sendMessage(e);
            List<ServiceBusReceivedMessage> got = receive(eu, 2, Duration.ofSeconds(4));
            assertEquals(List.of("eu"), got.stream().map(m -> m.getBody().toString()).collect(Collectors.toList()));
            eu.complete(got.get(0));
        }
        admin.deleteTopic("tp-admin");
        assertThrows(ResourceNotFoundException.class, () -> admin.getTopic("tp-admin"));
    }
}

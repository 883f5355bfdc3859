package dev.keybus.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;

import com.azure.messaging.servicebus.ServiceBusMessage;
import com.azure.messaging.servicebus.ServiceBusReceivedMessage;
import com.azure.messaging.servicebus.ServiceBusReceiverClient;
import com.azure.messaging.servicebus.ServiceBusSenderClient;
import com.azure.messaging.servicebus.administration.models.SqlRuleFilter;
import com.azure.messaging.servicebus.administration.models.CreateRuleOptions;
import com.azure.messaging.servicebus.ServiceBusRuleManagerClient;
import com.azure.messaging.servicebus.administration.models.RuleProperties;
import java.time.Duration;
import java.util.List;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;

/** Topics: fan-out to subscriptions, a SQL rule with an action, rules managed over $management. */
class TopicTest extends BrokerTest {
    @Override
    protected String entities() {
        return String.join("\n",
            "[[topics]]",
            "name = \"tp-fan\"",
            "[[topics.subscriptions]]",
            "name = \"all-a\"",
            "[[topics.subscriptions]]",
            "name = \"all-b\"",
            "",
            "[[topics]]",
            "name = \"tp-rules\"",
            "[[topics.subscriptions]]",
            "name = \"eu\"",
            "[[topics.subscriptions.rules]]",
            "name = \"eu-only\"",
            "sql_filter = \"region = 'EU' AND priority > 2\"",
            "action = \"SET routed = 'eu'\"",
            "",
            "[[topics]]",
            "name = \"tp-managed\"",
            "[[topics.subscriptions]]",
            "name = \"s\"",
            "");
    }

    private ServiceBusReceiverClient subscription(String topic, String sub) {
        return builder().receiver().topicName(topic).subscriptionName(sub).disableAutoComplete().buildClient();
    }

    private static List<String> bodies(List<ServiceBusReceivedMessage> msgs) {
        return msgs.stream().map(m -> m.getBody().toString()).sorted().collect(Collectors.toList());
    }

    @Test
    void everySubscriptionGetsItsOwnCopy() {
        try (ServiceBusSenderClient sender = builder().sender().topicName("tp-fan").buildClient();
             ServiceBusReceiverClient a = subscription("tp-fan", "all-a");
             ServiceBusReceiverClient b = subscription("tp-fan", "all-b")) {
            sender.sendMessage(new ServiceBusMessage("one"));
            sender.sendMessage(new ServiceBusMessage("two"));
            List<ServiceBusReceivedMessage> gotA = receive(a, 2, Duration.ofSeconds(10));
            List<ServiceBusReceivedMessage> gotB = receive(b, 2, Duration.ofSeconds(10));
            assertEquals(List.of("one", "two"), bodies(gotA));
            assertEquals(List.of("one", "two"), bodies(gotB));
            gotA.forEach(a::complete);
            gotB.forEach(b::complete);
        }
    }

    @Test
    void sqlRuleFiltersAndItsActionSetsAProperty() {
        try (ServiceBusSenderClient sender = builder().sender().topicName("tp-rules").buildClient();
             ServiceBusReceiverClient eu = subscription("tp-rules", "eu")) {
            for (Object[] p : new Object[][] {{"eu-high", "EU", 5L}, {"eu-low", "EU", 1L}, {"us-high", "US", 9L}}) {
                ServiceBusMessage m = new ServiceBusMessage((String) p[0]);
                m.getApplicationProperties().put("region", p[1]);
                m.getApplicationProperties().put("priority", p[2]);
                sender.sendMessage(m);
            }
            List<ServiceBusReceivedMessage> got = receive(eu, 3, Duration.ofSeconds(4));
            assertEquals(List.of("eu-high"), bodies(got));
            assertEquals("eu", got.get(0).getApplicationProperties().get("routed"));
            eu.complete(got.get(0));
        }
    }

    @Test
    void ruleManagerReplacesTheDefaultRule() {
        try (ServiceBusRuleManagerClient rules = builder().ruleManager().topicName("tp-managed").subscriptionName("s").buildClient();
             ServiceBusSenderClient sender = builder().sender().topicName("tp-managed").buildClient();
             ServiceBusReceiverClient sub = subscription("tp-managed", "s")) {
            rules.createRule("vip", new CreateRuleOptions(new SqlRuleFilter("tier = 'gold'")));
            rules.deleteRule("$Default");
            List<String> names = rules.listRules().stream().map(RuleProperties::getName).collect(Collectors.toList());
            assertEquals(List.of("vip"), names);
            assertFalse(names.contains("$Default"));
            ServiceBusMessage gold = new ServiceBusMessage("gold");
            gold.getApplicationProperties().put("tier", "gold");
            ServiceBusMessage plain = new ServiceBusMessage("plain");
            plain.getApplicationProperties().put("tier", "basic");
            sender.sendMessage(plain);
            sender.sendMessage(gold);
            List<ServiceBusReceivedMessage> got = receive(sub, 2, Duration.ofSeconds(4));
            assertEquals(List.of("gold"), bodies(got));
            sub.complete(got.get(0));
        }
    }
}

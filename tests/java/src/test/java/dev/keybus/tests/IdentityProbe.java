package dev.keybus.tests;

import com.azure.core.credential.AccessToken;
import com.azure.core.credential.TokenCredential;
import com.azure.core.credential.TokenRequestContext;
import com.azure.identity.DefaultAzureCredentialBuilder;
import com.azure.identity.ManagedIdentityCredentialBuilder;
import com.azure.messaging.servicebus.ServiceBusClientBuilder;
import com.azure.messaging.servicebus.ServiceBusMessage;
import com.azure.messaging.servicebus.ServiceBusReceiverClient;
import com.azure.messaging.servicebus.ServiceBusSenderClient;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Base64;

/**
 * Run in a child JVM by {@link IdentityTest}: the managed identity protocol reads
 * {@code IDENTITY_ENDPOINT}/{@code IDENTITY_HEADER} from the process environment, which a JVM
 * cannot change for itself. Arguments: {@code managed|default}, the broker's AMQPS port, the
 * queue. Gets a token for Service Bus, prints its claims, sends one message over AMQPS with it,
 * and checks that the same (Sender-only) identity cannot receive. Exit status 0 when all held.
 */
public final class IdentityProbe {
    private IdentityProbe() {
    }

    public static void main(String[] args) {
        String mode = args[0];
        int amqpsPort = Integer.parseInt(args[1]);
        String queue = args[2];
        TokenCredential credential = mode.equals("default")
            ? new DefaultAzureCredentialBuilder().build()
            : new ManagedIdentityCredentialBuilder().build();
        AccessToken token = credential.getTokenSync(new TokenRequestContext().addScopes("https://servicebus.azure.net/.default"));
        String[] parts = token.getToken().split("\\.");
        System.out.println("claims " + new String(Base64.getUrlDecoder().decode(parts[1]), StandardCharsets.UTF_8));
        ServiceBusClientBuilder builder = new ServiceBusClientBuilder()
            .credential("localhost", credential)
            .customEndpointAddress("https://localhost:" + amqpsPort);
        try (ServiceBusSenderClient sender = builder.sender().queueName(queue).buildClient()) {
            sender.sendMessage(new ServiceBusMessage("via " + mode));
        }
        System.out.println("sent");
        try (ServiceBusReceiverClient receiver = builder.receiver().queueName(queue).buildClient()) {
            receiver.receiveMessages(1, Duration.ofSeconds(2)).stream().count();
            System.out.println("FAIL: a Sender identity received");
            System.exit(3);
        } catch (RuntimeException e) {
            // the sync receiver surfaces the refused link as a terminated client; its cause
            // names the missing right
            Throwable cause = e;
            while (cause.getCause() != null && !String.valueOf(cause.getMessage()).contains("Unauthorized")) {
                cause = cause.getCause();
            }
            if (!String.valueOf(cause.getMessage()).contains("'Listen' claim(s) are required")) {
                System.out.println("FAIL: the receive failed otherwise: " + e);
                System.exit(4);
            }
            System.out.println("receive refused: " + cause.getMessage());
        }
        System.exit(0);
    }
}

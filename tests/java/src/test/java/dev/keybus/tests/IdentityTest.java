package dev.keybus.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.azure.messaging.servicebus.ServiceBusReceivedMessage;
import com.azure.messaging.servicebus.ServiceBusReceiverClient;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;

/**
 * {@code ManagedIdentityCredential} and {@code DefaultAzureCredential} getting tokens from
 * keybus's token service through {@code IDENTITY_ENDPOINT}/{@code IDENTITY_HEADER} (the App
 * Service managed identity protocol), then sending over AMQPS (the development CA in a trust
 * store) with a Sender-only grant: a receive is refused.
 */
class IdentityTest extends BrokerTest {
    private static final String MI_CLIENT = "11111111-1111-4111-8111-111111111111";
    private static final String MI_SECRET = "mi-secret-0123456789abcdef";

    @Override
    protected String entities() {
        return "[[queues]]\nname = \"q-identity\"\n";
    }

    @Override
    protected boolean onDisk() {
        return true;
    }

    @Override
    protected List<String> extraArgs() {
        try {
            Path policy = Files.createTempFile("keybus-java-policy-", ".toml");
            Files.writeString(policy, String.join("\n",
                "[[principals]]",
                "id = \"mi-app\"",
                "",
                "[[grants]]",
                "principal = \"mi-app\"",
                "role = \"Sender\"",
                "scope = \"queues/q-identity\"",
                "",
                "[sts]",
                "tenant = \"keybus-test\"",
                "",
                "[[sts.managed_identities]]",
                "principal = \"mi-app\"",
                "client_id = \"" + MI_CLIENT + "\"",
                "identity_header = \"" + MI_SECRET + "\"",
                ""));
            return List.of("--dev-tls", "--amqps-port", "0", "--https-port", "0", "--policy", policy.toString());
        } catch (IOException e) {
            throw new IllegalStateException("cannot write the policy file", e);
        }
    }

    /** The development CA as a PKCS12 trust store (password {@code changeit}). */
    private Path trustStore() throws Exception {
        KeyStore ks = KeyStore.getInstance("PKCS12");
        ks.load(null, null);
        try (var in = Files.newInputStream(broker.caFile())) {
            Certificate ca = CertificateFactory.getInstance("X.509").generateCertificate(in);
            ks.setCertificateEntry("keybus-dev-ca", ca);
        }
        Path store = Files.createTempFile("keybus-java-trust-", ".p12");
        try (OutputStream out = Files.newOutputStream(store)) {
            ks.store(out, "changeit".toCharArray());
        }
        return store;
    }

    private String probe(String mode) throws Exception {
        Path java = Path.of(System.getProperty("java.home"), "bin", "java");
        String classpath = System.getProperty("surefire.test.class.path", System.getProperty("java.class.path"));
        List<String> cmd = new ArrayList<>(List.of(java.toString(),
            "-Djavax.net.ssl.trustStore=" + trustStore(),
            "-Djavax.net.ssl.trustStorePassword=changeit",
            "-Djavax.net.ssl.trustStoreType=PKCS12",
            "-cp", classpath, IdentityProbe.class.getName(),
            mode, String.valueOf(broker.amqpsPort()), "q-identity"));
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
        Map<String, String> env = pb.environment();
        env.keySet().removeIf(k -> k.startsWith("AZURE_") || k.startsWith("IDENTITY_") || k.startsWith("MSI_")
            || k.equals("IMDS_ENDPOINT"));
        env.put("IDENTITY_ENDPOINT", "http://127.0.0.1:" + broker.httpPort() + "/msi/token");
        env.put("IDENTITY_HEADER", MI_SECRET);
        Process p = pb.start();
        String out = new String(p.getInputStream().readAllBytes());
        assertTrue(p.waitFor(120, TimeUnit.SECONDS), "probe did not end");
        assertEquals(0, p.exitValue(), "probe (" + mode + ") failed:\n" + out);
        return out;
    }

    @Test
    void managedAndDefaultCredentialsGetTokensThatSendButCannotReceive() throws Exception {
        String managed = probe("managed");
        assertTrue(managed.contains("\"appid\":\"" + MI_CLIENT + "\""), managed);
        assertTrue(managed.contains("\"aud\":\"https://servicebus.azure.net\""), managed);
        assertTrue(managed.contains("receive refused"), managed);
        String dflt = probe("default");
        assertTrue(dflt.contains("\"appid\":\"" + MI_CLIENT + "\""), dflt);
        assertTrue(dflt.contains("receive refused"), dflt);
        try (ServiceBusReceiverClient receiver = builder().receiver().queueName("q-identity").buildClient()) {
            List<ServiceBusReceivedMessage> got = receive(receiver, 2, Duration.ofSeconds(5));
            assertEquals(List.of("via default", "via managed"),
                got.stream().map(m -> m.getBody().toString()).sorted().collect(Collectors.toList()));
            got.forEach(receiver::complete);
        }
    }
}

package dev.keybus.tests;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * One {@code keybus serve} process for one test class: ephemeral ports on 127.0.0.1, its own work
 * directory (config, stderr log, data dir when on disk), ready once {@code GET /health} answers 200,
 * stopped by its PID (SIGTERM, then SIGKILL after 5 s). The binary is {@code KEYBUS_BIN}
 * (default {@code target/release/keybus} of the repository).
 */
public final class KeybusBroker implements AutoCloseable {
    public static final String SAS_POLICY = "RootManageSharedAccessKey";
    public static final String SAS_KEY = "SAS_KEY_VALUE";
    private static final Duration STARTUP_TIMEOUT = Duration.ofSeconds(30);
    private static final Pattern AMQP = Pattern.compile("keybus: amqp listening on [0-9A-Za-z.\\-\\[\\]:]+:(\\d+)\\s*$");
    private static final Pattern HTTP = Pattern.compile("keybus: http listening on [0-9A-Za-z.\\-\\[\\]:]+:(\\d+)\\s*$");
    private static final Pattern HTTPS = Pattern.compile("keybus: https listening on [0-9A-Za-z.\\-\\[\\]:]+:(\\d+)\\s*$");
    private static final Pattern AMQPS = Pattern.compile("keybus: amqps listening on [0-9A-Za-z.\\-\\[\\]:]+:(\\d+)\\s*$");
    private static final Pattern CA = Pattern.compile("keybus: development CA at (\\S+?):");

    private final ProcessBuilder command;
    private volatile Process process;
    private final Path workdir;
    private final Path stderr;
    private final List<String> stdoutLines = new ArrayList<>();
    private volatile int amqpPort;
    private volatile int httpPort;
    private volatile int httpsPort;
    private volatile int amqpsPort;
    private volatile String caPath;

    private KeybusBroker(ProcessBuilder command, Process process, Path workdir, Path stderr) {
        this.command = command;
        this.process = process;
        this.workdir = workdir;
        this.stderr = stderr;
    }

    /** The config's namespace and SAS policy, followed by the given entity TOML blocks. */
    public static String config(String entities) {
        return String.join("\n",
            "[namespace]",
            "name = \"keybus-java-tests\"",
            "",
            "[[sas_policies]]",
            "name = \"" + SAS_POLICY + "\"",
            "key = \"" + SAS_KEY + "\"",
            "rights = [\"Manage\", \"Send\", \"Listen\"]",
            "",
            entities,
            "");
    }

    public static Path repoRoot() {
        return Path.of(System.getProperty("user.dir")).resolve("../..").normalize();
    }

    public static Path keybusBin() {
        String raw = System.getenv().getOrDefault("KEYBUS_BIN", "target/release/keybus");
        Path path = Path.of(raw);
        return path.isAbsolute() ? path : repoRoot().resolve(path);
    }

    /** Start keybus with {@code toml} as its config; {@code onDisk} stores in the work dir. */
    public static KeybusBroker start(String toml, boolean onDisk) throws IOException, InterruptedException {
        return start(toml, onDisk, List.of());
    }

    /**
     * Start keybus with {@code toml} as its config and {@code extraArgs} after the usual ones
     * (e.g. {@code --dev-tls --amqps-port 0 --https-port 0}, which adds the HTTPS listener and
     * prints the development CA).
     */
    public static KeybusBroker start(String toml, boolean onDisk, List<String> extraArgs) throws IOException, InterruptedException {
        Path bin = keybusBin();
        if (!Files.isExecutable(bin)) {
            throw new IllegalStateException("keybus binary not found at " + bin
                + "; build it with `cargo build --release -p keybus` or point KEYBUS_BIN at it");
        }
        Path workdir = Files.createTempDirectory("keybus-java-");
        Path config = workdir.resolve("keybus.toml");
        Files.writeString(config, toml);
        Path stderr = workdir.resolve("keybus.stderr.log");
        List<String> cmd = new ArrayList<>(List.of(bin.toString(), "serve"));
        if (onDisk) {
            cmd.addAll(List.of("--data-dir", workdir.resolve("data").toString()));
        } else {
            cmd.add("--in-memory");
        }
        cmd.addAll(List.of("--amqp-port", "0", "--http-port", "0", "--bind", "127.0.0.1", "--config", config.toString()));
        cmd.addAll(extraArgs);
        ProcessBuilder pb = new ProcessBuilder(cmd).directory(workdir.toFile())
            .redirectError(ProcessBuilder.Redirect.appendTo(stderr.toFile()));
        Map<String, String> env = pb.environment();
        // KEYBUS_* variables would override the config (ports, data dir...); only the log filter passes.
        env.keySet().removeIf(k -> k.startsWith("KEYBUS_") && !k.equals("KEYBUS_LOG"));
        env.putIfAbsent("RUST_LOG", "info");
        env.putIfAbsent("RUST_BACKTRACE", "1");
        KeybusBroker broker = new KeybusBroker(pb, pb.start(), workdir, stderr);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> broker.process.destroyForcibly()));
        broker.awaitReady();
        return broker;
    }

    private void awaitReady() throws IOException, InterruptedException {
        Thread reader = new Thread(() -> {
            try (BufferedReader r = new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8))) {
                String line;
                while ((line = r.readLine()) != null) {
                    synchronized (stdoutLines) {
                        stdoutLines.add(line);
                    }
                    Matcher m = AMQP.matcher(line);
                    if (m.find()) {
                        amqpPort = Integer.parseInt(m.group(1));
                    }
                    m = HTTP.matcher(line);
                    if (m.find()) {
                        httpPort = Integer.parseInt(m.group(1));
                    }
                    m = HTTPS.matcher(line);
                    if (m.find()) {
                        httpsPort = Integer.parseInt(m.group(1));
                    }
                    m = AMQPS.matcher(line);
                    if (m.find()) {
                        amqpsPort = Integer.parseInt(m.group(1));
                    }
                    m = CA.matcher(line);
                    if (m.find()) {
                        caPath = m.group(1);
                    }
                }
            } catch (IOException e) {
                // the process ended; its exit shows in diagnostics()
            }
        }, "keybus-stdout");
        reader.setDaemon(true);
        reader.start();
        long deadline = System.nanoTime() + STARTUP_TIMEOUT.toNanos();
        HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(2)).build();
        String last = "no ports printed";
        while (System.nanoTime() < deadline) {
            if (!process.isAlive()) {
                throw new IllegalStateException("keybus exited with " + process.exitValue() + " before it was ready\n" + diagnostics());
            }
            if (amqpPort != 0 && httpPort != 0) {
                try {
                    HttpResponse<String> res = http.send(
                        HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + httpPort + "/health")).timeout(Duration.ofSeconds(2)).build(),
                        HttpResponse.BodyHandlers.ofString());
                    if (res.statusCode() == 200) {
                        return;
                    }
                    last = "HTTP " + res.statusCode();
                } catch (IOException e) {
                    last = e.toString();
                }
            }
            Thread.sleep(50);
        }
        close();
        throw new IllegalStateException("keybus was not ready within " + STARTUP_TIMEOUT + " (last: " + last + ")\n" + diagnostics());
    }

    public String connectionString() {
        return "Endpoint=sb://127.0.0.1:" + amqpPort + ";SharedAccessKeyName=" + SAS_POLICY
            + ";SharedAccessKey=" + SAS_KEY + ";UseDevelopmentEmulator=true;";
    }

    public int httpPort() {
        return httpPort;
    }

    /** The HTTPS port (0 unless started with {@code --dev-tls --https-port 0}). */
    public int httpsPort() {
        return httpsPort;
    }

    /** The AMQPS port (0 unless started with {@code --dev-tls --amqps-port 0}). */
    public int amqpsPort() {
        return amqpsPort;
    }

    /** The development CA certificate (PEM) of a {@code --dev-tls} broker. */
    public Path caFile() {
        if (caPath == null) {
            throw new IllegalStateException("broker started without --dev-tls");
        }
        return workdir.resolve(caPath);
    }

    public long pid() {
        return process.pid();
    }

    /**
     * Kill the process at once (SIGKILL), as a crash would, and start it again on the same
     * config and data dir; the ports (and so the connection string) change.
     */
    public void crashAndRestart() throws IOException, InterruptedException {
        kill();
        amqpPort = 0;
        httpPort = 0;
        httpsPort = 0;
        process = command.start();
        awaitReady();
    }

    /** Kill the process at once (SIGKILL), as a crash would. */
    public void kill() throws InterruptedException {
        process.destroyForcibly();
        process.waitFor(10, TimeUnit.SECONDS);
    }

    /** The tail of stdout and stderr and the process state, for failure messages. */
    public String diagnostics() {
        String state = process.isAlive() ? "running, pid " + process.pid() : "exited with " + process.exitValue();
        String err;
        try {
            List<String> lines = Files.readAllLines(stderr);
            err = String.join("\n", lines.subList(Math.max(0, lines.size() - 60), lines.size()));
        } catch (IOException e) {
            err = "<no stderr: " + e + ">";
        }
        String out;
        synchronized (stdoutLines) {
            out = String.join("\n", stdoutLines.subList(Math.max(0, stdoutLines.size() - 20), stdoutLines.size()));
        }
        return "--- keybus " + state + "; workdir " + workdir + " ---\n--- stdout ---\n" + out + "\n--- stderr ---\n" + err;
    }

    /** SIGTERM by PID, SIGKILL after 5 s. */
    @Override
    public void close() throws InterruptedException {
        if (!process.isAlive()) {
            return;
        }
        process.destroy();
        if (!process.waitFor(5, TimeUnit.SECONDS)) {
            process.destroyForcibly();
            process.waitFor(10, TimeUnit.SECONDS);
        }
    }
}

package org.rmqgateway.e2e.spring;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

import java.util.regex.Matcher;
import java.util.regex.Pattern;

import com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.rocketmq.client.apis.ClientServiceProvider;
import org.apache.rocketmq.client.core.RocketMQClientTemplate;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.context.ConfigurableApplicationContext;

/**
 * End-to-end driver: a Spring Boot app with rocketmq-v5-client-spring-boot-starter.
 *
 * <pre>
 * java -jar rmq-e2e-spring.jar {produce-and-consume|push-consume} --endpoint HOST:PORT --topic T
 *      --group G [--count N] [--prefix P] [--tag TAG] [--timeout-secs S] [--spring.property=value ...]
 * </pre>
 *
 * The driver arguments only become Spring properties (--RMQ_ENDPOINT=..., read by
 * application.yml, and e2e.*); the RocketMQ clients are configured by the starter from
 * application.yml alone. produce-and-consume: RocketMQClientTemplate sends N messages
 * "prefix-i" (tag, key "prefix-key-i") while the @RocketMQMessageListener receives them.
 * push-consume: the listener alone, for messages another SDK sent. The run ends when all N
 * arrived or after --timeout-secs; then one line "RESULT {json}" (fields of
 * integration_tests::sdk::Report) is printed and the process exits (0 = goal met).
 */
@SpringBootApplication
public class SpringE2eApplication {
    private static final long SHUTDOWN_LIMIT_SECS = 40;
    /** after the last message arrived: time for the client to send its acks */
    private static final long ACK_GRACE_MILLIS = 2000;

    static boolean sends(String mode) {
        return "produce-and-consume".equals(mode);
    }

    public static void main(String[] argv) {
        long started = System.nanoTime();
        Map<String, Object> report = new LinkedHashMap<>();
        report.put("sdk", "spring");
        boolean ok = false;
        try {
            DriverArgs args = DriverArgs.parse(argv);
            report.put("mode", args.mode);
            report.put("topic", args.topic);
            report.put("group", args.group);
            report.put("count", args.count);
            // The shaded client logs to ${rocketmq.log.root}/rocketmq-client.log (default ~/logs/rocketmq);
            // set before any client class is loaded.
            String home = System.getenv("RMQ_E2E_HOME");
            if (System.getProperty("rocketmq.log.root") == null && home != null) {
                System.setProperty("rocketmq.log.root", Paths.get(home, "logs").toString());
            }
            report.put("sdk_version", jarVersion(RocketMQClientTemplate.class, "rocketmq-v5-client-spring-boot-"));
            report.put("client_java_version", jarVersion(ClientServiceProvider.class, "rocketmq-client-java-"));
            ok = run(args, report);
        } catch (IllegalArgumentException e) {
            report.put("errors", List.of("usage: " + e.getMessage()));
        } catch (Throwable e) {
            report.put("errors", List.of("unhandled: " + e));
        }
        report.put("ok", ok);
        report.put("elapsed_ms", TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started));
        try {
            System.out.println("RESULT " + new ObjectMapper().writeValueAsString(report));
        } catch (IOException e) {
            System.out.println("RESULT {\"sdk\":\"spring\",\"ok\":false,\"errors\":[\"report: " + e + "\"]}");
        }
        System.out.flush();
        // client threads are not all daemons: do not let them keep the JVM alive
        Runtime.getRuntime().halt(ok ? 0 : 1);
    }

    private static boolean run(DriverArgs args, Map<String, Object> report) throws InterruptedException {
        List<String> errors = new ArrayList<>();
        report.put("errors", errors);
        ConfigurableApplicationContext ctx;
        try {
            ctx = SpringApplication.run(SpringE2eApplication.class, args.springArgs());
        } catch (Throwable e) {
            errors.add("startup: " + rootCause(e));
            scanClientLog(report);
            return false;
        }
        Tally tally = ctx.getBean(Tally.class);
        // whether every client of this run used TLS: the listener container of starter 2.3.1
        // always does (it has no ssl switch); the template's producer unless ssl-enabled=false
        boolean producerTls = ctx.getEnvironment().getProperty("rocketmq.producer.ssl-enabled", Boolean.class, true);
        report.put("tls", !sends(args.mode) || producerTls);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(args.timeoutSecs);
        if (sends(args.mode)) {
            E2eSender sender = ctx.getBean(E2eSender.class);
            List<String> ids = new ArrayList<>();
            int failed = 0;
            for (int i = 0; i < args.count; i++) {
                if (System.nanoTime() > deadline) {
                    failed += args.count - i;
                    errors.add("timed out after " + i + " of " + args.count + " sends");
                    break;
                }
                try {
                    ids.add(sender.send(args.prefix + "-" + i, args.prefix + "-key-" + i, i));
                } catch (RuntimeException e) {
                    failed++;
                    if (errors.size() < 20) {
                        errors.add("send #" + i + ": " + rootCause(e));
                    }
                }
            }
            report.put("sent", ids.size());
            report.put("failed", failed);
            report.put("sent_ids", ids);
        }
        boolean complete = tally.awaitComplete(deadline);
        if (complete) {
            Thread.sleep(ACK_GRACE_MILLIS);
        } else {
            errors.add("timed out after " + args.timeoutSecs + " s waiting for the listener");
        }
        report.put("shutdown_error", closeBounded(ctx));
        report.putAll(tally.report());
        scanClientLog(report);
        errors.addAll(castList(report.remove("listener_errors")));
        boolean sentAll = !sends(args.mode) || Integer.valueOf(args.count).equals(report.get("sent"));
        return sentAll && tally.complete() && tally.mismatched() == 0
                && (int) report.get("corrupted") == 0 && (int) report.get("ack_failed") == 0;
    }

    /** Closes the context (push consumer and producer shut down) on a helper thread, bounded. */
    private static String closeBounded(ConfigurableApplicationContext ctx) throws InterruptedException {
        AtomicReference<String> error = new AtomicReference<>();
        Thread t = new Thread(() -> {
            try {
                ctx.close();
            } catch (Throwable e) {
                error.set(rootCause(e));
            }
        }, "e2e-shutdown");
        t.setDaemon(true);
        t.start();
        t.join(TimeUnit.SECONDS.toMillis(SHUTDOWN_LIMIT_SECS));
        if (t.isAlive()) {
            return "context close did not finish within " + SHUTDOWN_LIMIT_SECS + "s";
        }
        return error.get();
    }

    /**
     * The push consumer acks (and discards corrupted messages) inside the client; it only
     * logs the outcome. Count those log lines: "Message is corrupted" (body digest mismatch,
     * never handed to the listener) and failed acks; keep the first ERROR lines.
     */
    private static void scanClientLog(Map<String, Object> report) {
        int corrupted = 0;
        int ackFailed = 0;
        List<String> errorLines = new ArrayList<>();
        String root = System.getProperty("rocketmq.log.root");
        Path log = root == null ? null : Paths.get(root, "rocketmq-client.log");
        if (log != null) {
            try {
                Thread.sleep(300); // the client's log appender is asynchronous
                for (String line : Files.readAllLines(log, StandardCharsets.UTF_8)) {
                    corrupted += line.contains("Message is corrupted") ? 1 : 0;
                    ackFailed += line.contains("Failed to ack message")
                            || line.contains("Exception raised while acknowledging message") ? 1 : 0;
                    if (line.contains(" ERROR ") && errorLines.size() < 10) {
                        errorLines.add(line.length() > 400 ? line.substring(0, 400) : line);
                    }
                }
            } catch (IOException | InterruptedException e) {
                errorLines.add("reading " + log + ": " + e);
            }
        }
        report.put("corrupted", corrupted);
        report.put("ack_failed", ackFailed);
        report.put("client_log_errors", errorLines);
    }

    /** The release in the name of the jar a class was loaded from (inside the Boot jar: BOOT-INF/lib/x-1.2.3.jar). */
    static String jarVersion(Class<?> cls, String artifactPrefix) {
        try {
            String where = String.valueOf(cls.getProtectionDomain().getCodeSource().getLocation());
            Matcher m = Pattern.compile(Pattern.quote(artifactPrefix) + "([0-9][0-9A-Za-z.-]*)\\.jar").matcher(where);
            return m.find() ? m.group(1) : "unknown (" + where + ")";
        } catch (RuntimeException e) {
            return "unknown (" + e + ")";
        }
    }

    @SuppressWarnings("unchecked")
    private static List<String> castList(Object o) {
        return o == null ? List.of() : (List<String>) o;
    }

    static String rootCause(Throwable e) {
        Throwable t = e;
        StringBuilder s = new StringBuilder(e.toString());
        while (t.getCause() != null && t.getCause() != t) {
            t = t.getCause();
            s.append(" <- ").append(t);
        }
        return s.length() > 600 ? s.substring(0, 600) : s.toString();
    }

    /** The common driver arguments, turned into Spring properties. */
    static final class DriverArgs {
        String mode;
        String endpoint;
        String topic;
        String group;
        String tag = "e2e";
        String prefix = "m";
        int count = 50;
        long timeoutSecs = 60;
        final List<String> passThrough = new ArrayList<>();

        static DriverArgs parse(String[] argv) {
            DriverArgs a = new DriverArgs();
            for (int i = 0; i < argv.length; i++) {
                String arg = argv[i];
                if (arg.startsWith("--") && arg.contains("=")) {
                    a.passThrough.add(arg); // a Spring property, e.g. --rocketmq.producer.ssl-enabled=false
                    continue;
                }
                if (!arg.startsWith("--")) {
                    if (a.mode != null) {
                        throw new IllegalArgumentException("unexpected argument " + arg);
                    }
                    a.mode = arg;
                    continue;
                }
                if (i + 1 >= argv.length) {
                    throw new IllegalArgumentException(arg + " needs a value");
                }
                String value = argv[++i];
                switch (arg) {
                    case "--endpoint" -> a.endpoint = value;
                    case "--topic" -> a.topic = value;
                    case "--group" -> a.group = value;
                    case "--tag" -> a.tag = value;
                    case "--prefix" -> a.prefix = value;
                    case "--count" -> a.count = Integer.parseInt(value);
                    case "--timeout-secs" -> a.timeoutSecs = (long) Double.parseDouble(value);
                    default -> throw new IllegalArgumentException("unknown option " + arg);
                }
            }
            if (!"produce-and-consume".equals(a.mode) && !"push-consume".equals(a.mode)) {
                throw new IllegalArgumentException("mode must be produce-and-consume or push-consume, got " + a.mode);
            }
            if (a.endpoint == null || a.topic == null || a.group == null || a.group.isEmpty()) {
                throw new IllegalArgumentException("--endpoint, --topic and --group are required");
            }
            return a;
        }

        String[] springArgs() {
            List<String> s = new ArrayList<>(List.of(
                    "--RMQ_ENDPOINT=" + endpoint, "--RMQ_TOPIC=" + topic, "--RMQ_GROUP=" + group,
                    "--RMQ_TAG=" + tag, "--e2e.mode=" + mode, "--e2e.prefix=" + prefix, "--e2e.count=" + count));
            s.addAll(passThrough);
            return s.toArray(new String[0]);
        }
    }
}

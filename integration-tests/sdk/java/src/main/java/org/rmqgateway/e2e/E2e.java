package org.rmqgateway.e2e;

import java.lang.reflect.Method;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Future;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.rocketmq.client.apis.ClientConfiguration;
import org.apache.rocketmq.client.apis.ClientServiceProvider;
import org.apache.rocketmq.client.apis.consumer.ConsumeResult;
import org.apache.rocketmq.client.apis.consumer.FilterExpression;
import org.apache.rocketmq.client.apis.consumer.FilterExpressionType;
import org.apache.rocketmq.client.apis.consumer.PushConsumer;
import org.apache.rocketmq.client.apis.consumer.SimpleConsumer;
import org.apache.rocketmq.client.apis.message.Message;
import org.apache.rocketmq.client.apis.message.MessageView;
import org.apache.rocketmq.client.apis.producer.Producer;
import org.apache.rocketmq.client.apis.producer.SendReceipt;

/**
 * End-to-end driver for the official RocketMQ Java SDK ({@code rocketmq-client-java}).
 *
 * <pre>
 * E2e {produce|simple-consume|push-consume} --endpoint HOST:PORT --topic T [--group G]
 *     [--count N] [--prefix P] [--tag TAG] [--timeout-secs S]
 *     [--tls]                  TLS (the SDK's default); without it enableSsl(false), plaintext h2c
 *     [--namespace NS]         every client in namespace NS (ClientConfiguration.setNamespace)
 *     [--batch burst|wire]     produce: how the last third is sent (see below; default burst)
 *     [--threads T]            push-consume: consumption threads (default 4)
 *     [--fail-every K]         push-consume: the listener returns FAILURE on the first delivery
 *                              of every K-th message (body index i with (i+1) % K == 0)
 *     [--invisible-secs S]     simple-consume: invisible duration of receive (default 30)
 *     [--receive-batch B]      simple-consume: max messages per receive (default 16)
 *     [--pause-ms MS]          consumers: sleep after each message (slows a run down on purpose)
 *     [--progress]             print "PROGRESS received=K" on stdout whenever K grows
 * </pre>
 *
 * <p>The message-type modes (fifo-produce, fifo-consume, delay-produce, timed-consume, recall,
 * tx-produce, tx-check, priority-produce) are in {@link MessageTypes}, the offset-reset ones
 * (reset-simple-consume, reset-push-consume) in {@link OffsetReset}, the SQL92 filter modes
 * (filter-produce, filter-consume) in {@link Filters}, retry-run in {@link Consumption}; their
 * arguments and RESULT fields are those of {@code sdk/MESSAGE_TYPES.md}. The cluster test modes
 * (load-produce, drain-consume) are in {@link ClusterLoad}.
 *
 * <p>Prints exactly one line {@code RESULT <json>} on stdout (fields as the Python/Node drivers;
 * plus {@code sdk_version}, {@code attempts}, {@code failed_on_purpose}); exit 0 when the mode's
 * goal was met. The SDK log goes to {@code $RMQ_E2E_HOME/logs} ({@code rocketmq.log.root}).
 *
 * <p>produce: bodies {@code <prefix>-<i>}, tag {@code --tag}, keys {@code <prefix>-key-<i>} and
 * {@code part-<part>}. The first third is sent with {@code send} (sync), the second with
 * {@code sendAsync} (up to 8 in flight), the last third as a "batch": the 5.x API has no batch
 * send, so {@code burst} fires chunks of 10 {@code sendAsync} at once and waits for each chunk;
 * {@code wire} calls the SDK's internal {@code ProducerImpl.send(List, boolean)} by reflection,
 * which puts the 10 messages of a chunk into one SendMessageRequest.
 */
public final class E2e {
    private static final int AWAIT_SECS = 10;
    private static final int CHUNK = 10;

    private final Map<String, String> opts;
    private final String mode;
    private final String endpoint;
    final String topic;
    final String group;
    final int count;
    final String prefix;
    final String tag;
    final long deadlineNanos;
    private final boolean progress;
    private final long pauseMs;
    final ClientServiceProvider provider;
    private final List<String> errors = Collections.synchronizedList(new ArrayList<>());
    /** Acks sent again because the gateway was unreachable (restarting). */
    private int ackRetries = 0;

    private E2e(String mode, Map<String, String> opts) {
        this.mode = mode;
        this.opts = opts;
        this.endpoint = required("endpoint");
        this.topic = required("topic");
        this.group = opt("group", "java-e2e-group");
        this.count = Integer.parseInt(opt("count", "50"));
        this.prefix = opt("prefix", "java");
        this.tag = opt("tag", "e2e");
        double timeout = Double.parseDouble(opt("timeout-secs", "60"));
        this.deadlineNanos = System.nanoTime() + (long) (timeout * 1e9);
        this.progress = opts.containsKey("progress");
        this.pauseMs = Long.parseLong(opt("pause-ms", "0"));
        this.provider = ClientServiceProvider.loadService();
    }

    String opt(String name, String dflt) {
        String v = opts.get(name);
        if (v == null) {
            v = System.getenv("RMQ_E2E_" + name.toUpperCase().replace('-', '_'));
        }
        return v == null ? dflt : v;
    }

    private String required(String name) {
        String v = opt(name, null);
        if (v == null || v.isEmpty()) {
            throw new IllegalArgumentException("--" + name + " is required");
        }
        return v;
    }

    boolean progressWanted() {
        return progress;
    }

    boolean timeLeft() {
        return System.nanoTime() < deadlineNanos;
    }

    ClientConfiguration config() {
        return ClientConfiguration.newBuilder()
            .setEndpoints(endpoint)
            .enableSsl(opts.containsKey("tls"))
            .setRequestTimeout(Duration.ofSeconds(5))
            .setNamespace(opt("namespace", ""))
            .build();
    }

    void error(String what) {
        if (errors.size() < 20) {
            errors.add(what);
        }
    }

    /**
     * Acks, retrying while the gateway is unreachable (a restart in the middle of a run): an
     * application keeps its receipt handle and acks again, and the handle still holds after the
     * restart. Other failures, and a gateway still away after about 10 s, are thrown.
     */
    void ackRetrying(SimpleConsumer consumer, MessageView mv) throws Exception {
        for (int attempt = 1; ; attempt++) {
            try {
                consumer.ack(mv);
                return;
            } catch (Exception e) {
                // UNAVAILABLE: the gateway is down or restarting. "UNKNOWN: channel closed": the
                // connection broke with this ack in flight (a SIGKILL), its fate unknown. Acking
                // again is harmless (a second ack of a message succeeds).
                String why = describe(e);
                boolean unreachable = why.contains("UNAVAILABLE") || why.contains("channel closed");
                if (!unreachable || attempt >= 20 || !timeLeft()) {
                    throw e;
                }
                ackRetries++;
                Thread.sleep(500);
            }
        }
    }

    static String describe(Throwable e) {
        Throwable t = e;
        while ((t instanceof java.util.concurrent.ExecutionException
            || t instanceof java.util.concurrent.CompletionException
            || t instanceof java.lang.reflect.InvocationTargetException) && t.getCause() != null) {
            t = t.getCause();
        }
        return t.getClass().getSimpleName() + ": " + t.getMessage();
    }

    // ---------------------------------------------------------------------------------- produce

    private Message message(int i, String part) {
        return provider.newMessageBuilder()
            .setTopic(topic)
            .setTag(tag)
            .setKeys(prefix + "-key-" + i, "part-" + part)
            .setBody((prefix + "-" + i).getBytes(StandardCharsets.UTF_8))
            .build();
    }

    private Map<String, Object> produce() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        String batchHow = opt("batch", "burst");
        if (!batchHow.equals("burst") && !batchHow.equals("wire")) {
            throw new IllegalArgumentException("--batch must be burst or wire");
        }
        String[] ids = new String[count];
        Producer producer;
        try {
            producer = provider.newProducerBuilder().setClientConfiguration(config()).setTopics(topic).build();
        } catch (Exception e) {
            error("startup: " + describe(e));
            r.put("sent", 0);
            r.put("failed", count);
            r.put("ids", List.of());
            return r;
        }
        int syncEnd = (count + 2) / 3;
        int asyncEnd = syncEnd + (count - syncEnd + 1) / 2;
        int failed = 0;
        // 1. sync send
        for (int i = 0; i < syncEnd; i++) {
            if (!timeLeft()) {
                break;
            }
            try {
                ids[i] = producer.send(message(i, "sync")).getMessageId().toString();
            } catch (Exception e) {
                error("send #" + i + ": " + describe(e));
            }
        }
        // 2. sendAsync, at most 8 in flight
        Semaphore window = new Semaphore(8);
        List<CompletableFuture<SendReceipt>> pending = new ArrayList<>();
        for (int i = syncEnd; i < asyncEnd && timeLeft(); i++) {
            window.acquire();
            final int index = i;
            CompletableFuture<SendReceipt> f = producer.sendAsync(message(i, "async"));
            pending.add(f.whenComplete((receipt, e) -> {
                window.release();
                if (e != null) {
                    error("sendAsync #" + index + ": " + describe(e));
                } else {
                    ids[index] = receipt.getMessageId().toString();
                }
            }));
        }
        for (CompletableFuture<SendReceipt> f : pending) {
            try {
                f.get(Math.max(1, deadlineNanos - System.nanoTime()), TimeUnit.NANOSECONDS);
            } catch (Exception e) {
                // recorded by whenComplete (or a timeout: the id stays missing)
            }
        }
        // 3. the "batch": chunks of CHUNK messages
        Method wire = null;
        if (batchHow.equals("wire")) {
            wire = producer.getClass().getDeclaredMethod("send", List.class, boolean.class);
            wire.setAccessible(true);
        }
        for (int start = asyncEnd; start < count && timeLeft(); start += CHUNK) {
            int end = Math.min(count, start + CHUNK);
            List<Message> chunk = new ArrayList<>();
            for (int i = start; i < end; i++) {
                chunk.add(message(i, "batch"));
            }
            if (wire != null) {
                try {
                    Future<?> f = (Future<?>) wire.invoke(producer, chunk, false);
                    List<?> receipts = (List<?>) f.get(Math.max(1, deadlineNanos - System.nanoTime()),
                        TimeUnit.NANOSECONDS);
                    if (receipts.size() != chunk.size()) {
                        error("batch of " + chunk.size() + " got " + receipts.size() + " receipts");
                    }
                    for (int k = 0; k < receipts.size() && start + k < end; k++) {
                        ids[start + k] = ((SendReceipt) receipts.get(k)).getMessageId().toString();
                    }
                } catch (Exception e) {
                    error("batch [" + start + ", " + end + "): " + describe(e));
                }
            } else {
                List<CompletableFuture<SendReceipt>> burst = new ArrayList<>();
                for (Message m : chunk) {
                    burst.add(producer.sendAsync(m));
                }
                for (int k = 0; k < burst.size(); k++) {
                    try {
                        ids[start + k] = burst.get(k)
                            .get(Math.max(1, deadlineNanos - System.nanoTime()), TimeUnit.NANOSECONDS)
                            .getMessageId().toString();
                    } catch (Exception e) {
                        error("burst #" + (start + k) + ": " + describe(e));
                    }
                }
            }
        }
        List<String> sent = new ArrayList<>();
        for (String id : ids) {
            if (id != null) {
                sent.add(id);
            } else {
                failed++;
            }
        }
        r.put("sent", sent.size());
        r.put("failed", failed);
        r.put("ids", sent);
        r.put("batch", batchHow);
        r.put("shutdown_error", closeBounded(producer, 15));
        r.put("ok", sent.size() == count);
        return r;
    }

    // ------------------------------------------------------------------------- consumers' tally

    /** Deliveries checked against the expected bodies {@code <prefix>-0 .. <prefix>-<count-1>}. */
    private final class Tally {
        final Map<Integer, String> received = new TreeMap<>();
        final java.util.Set<String> seenIds = new java.util.HashSet<>();
        final List<String> duplicates = new ArrayList<>();
        final List<String> unexpected = new ArrayList<>();
        /** every delivery's attempt, per message id */
        final Map<String, List<Integer>> attempts = new TreeMap<>();
        int corrupted;
        int maxAttempt;

        /** The body index of an expected message, else -1. */
        int index(MessageView mv) {
            String text = body(mv);
            if (text.startsWith(prefix + "-")) {
                String tail = text.substring(prefix.length() + 1);
                if (!tail.isEmpty() && tail.chars().allMatch(Character::isDigit) && tail.length() < 9) {
                    int i = Integer.parseInt(tail);
                    if (i < count) {
                        return i;
                    }
                }
            }
            return -1;
        }

        synchronized void record(MessageView mv, boolean isCorrupted) {
            String id = mv.getMessageId().toString();
            maxAttempt = Math.max(maxAttempt, mv.getDeliveryAttempt());
            corrupted += isCorrupted ? 1 : 0;
            attempts.computeIfAbsent(id, k -> new ArrayList<>()).add(mv.getDeliveryAttempt());
            int i = index(mv);
            if (i < 0) {
                String text = body(mv);
                unexpected.add(text.substring(0, Math.min(80, text.length())));
                return;
            }
            if (seenIds.contains(id) || received.containsKey(i)) {
                duplicates.add(id);
                return;
            }
            seenIds.add(id);
            received.put(i, id);
            if (progress) {
                System.out.println("PROGRESS received=" + received.size());
                System.out.flush();
            }
        }

        synchronized boolean complete() {
            return received.size() == count;
        }

        synchronized void report(Map<String, Object> r) {
            r.put("received", received.size());
            r.put("duplicates", new ArrayList<>(duplicates));
            r.put("unexpected", new ArrayList<>(unexpected));
            List<Integer> missing = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                if (!received.containsKey(i)) {
                    missing.add(i);
                }
            }
            r.put("missing", missing);
            r.put("ids", new ArrayList<>(received.values()));
            r.put("corrupted", corrupted);
            r.put("max_delivery_attempt", maxAttempt);
            Map<String, List<Integer>> copy = new TreeMap<>();
            attempts.forEach((id, list) -> copy.put(id, new ArrayList<>(list)));
            r.put("attempts", copy);
        }
    }

    static String body(MessageView mv) {
        ByteBuffer b = mv.getBody().duplicate();
        byte[] bytes = new byte[b.remaining()];
        b.get(bytes);
        return new String(bytes, StandardCharsets.UTF_8);
    }

    /** The SDK's digest check (MessageViewImpl.isCorrupted, internal); false if unavailable. */
    private static boolean corrupted(MessageView mv) {
        try {
            return (Boolean) mv.getClass().getMethod("isCorrupted").invoke(mv);
        } catch (ReflectiveOperationException e) {
            return false;
        }
    }

    /** The receipt handle (MessageViewImpl.getReceiptHandle, internal). */
    private static String receiptHandle(MessageView mv) {
        try {
            return (String) mv.getClass().getMethod("getReceiptHandle").invoke(mv);
        } catch (ReflectiveOperationException e) {
            return null;
        }
    }

    private void pause() throws InterruptedException {
        if (pauseMs > 0) {
            Thread.sleep(pauseMs);
        }
    }

    // --------------------------------------------------------------------------- simple-consume

    private Map<String, Object> simpleConsume() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        Tally tally = new Tally();
        int invisibleSecs = Integer.parseInt(opt("invisible-secs", "30"));
        int batch = Integer.parseInt(opt("receive-batch", "16"));
        int acked = 0;
        int ackFailed = 0;
        int receiveCalls = 0;
        int receiveErrors = 0;
        int changedInvisible = 0;
        java.util.Set<String> ackedIds = new java.util.HashSet<>();
        SimpleConsumer consumer;
        try {
            consumer = provider.newSimpleConsumerBuilder()
                .setClientConfiguration(config())
                .setConsumerGroup(group)
                .setAwaitDuration(Duration.ofSeconds(AWAIT_SECS))
                .setSubscriptionExpressions(Map.of(topic, new FilterExpression(tag, FilterExpressionType.TAG)))
                .build();
        } catch (Exception e) {
            error("startup: " + describe(e));
            tally.report(r);
            return r;
        }
        while (!tally.complete() && timeLeft()) {
            receiveCalls++;
            List<MessageView> messages;
            try {
                messages = consumer.receive(batch, Duration.ofSeconds(invisibleSecs));
            } catch (Exception e) {
                receiveErrors++;
                error("receive: " + describe(e));
                Thread.sleep(500);
                continue;
            }
            for (MessageView mv : messages) {
                tally.record(mv, corrupted(mv));
                try {
                    if (changedInvisible == 0) {
                        String old = receiptHandle(mv);
                        consumer.changeInvisibleDuration(mv, Duration.ofSeconds(invisibleSecs));
                        String now = receiptHandle(mv);
                        if (old == null || old.equals(now)) {
                            error("changeInvisibleDuration left the receipt handle unchanged");
                        } else {
                            changedInvisible++;
                        }
                    }
                    ackRetrying(consumer, mv);
                    acked++;
                    ackedIds.add(mv.getMessageId().toString());
                } catch (Exception e) {
                    ackFailed++;
                    error("ack/changeInvisibleDuration " + mv.getMessageId() + ": " + describe(e));
                }
                pause();
            }
        }
        tally.report(r);
        List<String> unacked = new ArrayList<>(tally.attempts.keySet());
        unacked.removeAll(ackedIds);
        r.put("unacked", unacked);
        r.put("acked", acked);
        r.put("ack_failed", ackFailed);
        r.put("ack_retries", ackRetries);
        r.put("receive_calls", receiveCalls);
        r.put("receive_errors", receiveErrors);
        r.put("changed_invisible", changedInvisible);
        r.put("shutdown_error", closeBounded(consumer, 15));
        r.put("ok", tally.complete() && ackFailed == 0 && tally.corrupted == 0);
        return r;
    }

    // ----------------------------------------------------------------------------- push-consume

    private Map<String, Object> pushConsume() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        Tally tally = new Tally();
        int failEvery = Integer.parseInt(opt("fail-every", "0"));
        // ids the listener failed on purpose, and those of them that later succeeded
        Map<String, Integer> failedOnPurpose = new ConcurrentHashMap<>();
        Map<String, Integer> succeededAfterFailure = new ConcurrentHashMap<>();
        AtomicInteger calls = new AtomicInteger();
        AtomicInteger successes = new AtomicInteger();
        PushConsumer consumer;
        try {
            consumer = provider.newPushConsumerBuilder()
                .setClientConfiguration(config())
                .setConsumerGroup(group)
                .setSubscriptionExpressions(Map.of(topic, new FilterExpression(tag, FilterExpressionType.TAG)))
                .setConsumptionThreadCount(Integer.parseInt(opt("threads", "4")))
                .setMessageListener(mv -> {
                    calls.incrementAndGet();
                    tally.record(mv, corrupted(mv));
                    String id = mv.getMessageId().toString();
                    int i = tally.index(mv);
                    if (failEvery > 0 && i >= 0 && (i + 1) % failEvery == 0
                        && failedOnPurpose.putIfAbsent(id, mv.getDeliveryAttempt()) == null) {
                        return ConsumeResult.FAILURE;
                    }
                    if (failedOnPurpose.containsKey(id)) {
                        succeededAfterFailure.putIfAbsent(id, mv.getDeliveryAttempt());
                    }
                    successes.incrementAndGet();
                    try {
                        pause();
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                    }
                    return ConsumeResult.SUCCESS;
                })
                .build();
        } catch (Exception e) {
            error("startup: " + describe(e));
            tally.report(r);
            return r;
        }
        int expectedFailures = failEvery > 0 ? count / failEvery : 0;
        while (timeLeft()) {
            if (tally.complete() && succeededAfterFailure.size() == expectedFailures) {
                break;
            }
            Thread.sleep(100);
        }
        Thread.sleep(2000); // the SDK acks after the listener returns: let the last acks go out
        boolean done = tally.complete() && succeededAfterFailure.size() == expectedFailures;
        // Deliveries that still happen while the consumer shuts down count too.
        r.put("shutdown_error", closeBounded(consumer, 40));
        tally.report(r);
        r.put("acked", successes.get());
        r.put("consume_calls", calls.get());
        r.put("failed_on_purpose", new TreeMap<>(failedOnPurpose));
        r.put("succeeded_after_failure", new TreeMap<>(succeededAfterFailure));
        r.put("ok", done && tally.corrupted == 0);
        return r;
    }

    // ------------------------------------------------------------------------------------ misc

    /** Closes on a helper thread; an error string, or null. */
    static String closeBounded(AutoCloseable client, int limitSecs) {
        String[] outcome = new String[1];
        Thread t = new Thread(() -> {
            try {
                client.close();
            } catch (Exception e) {
                outcome[0] = describe(e);
            }
        }, "e2e-close");
        t.setDaemon(true);
        t.start();
        try {
            t.join(limitSecs * 1000L);
        } catch (InterruptedException e) {
            return "interrupted while closing";
        }
        return t.isAlive() ? "close did not finish within " + limitSecs + "s" : outcome[0];
    }

    private static String sdkVersion() {
        try {
            Class<?> c = Class.forName("org.apache.rocketmq.client.java.misc.MetadataUtils");
            return (String) c.getMethod("getVersion").invoke(null);
        } catch (ReflectiveOperationException e) {
            return "unknown";
        }
    }

    private static Map<String, String> parse(String[] args, int from) {
        Map<String, String> opts = new LinkedHashMap<>();
        for (int i = from; i < args.length; i++) {
            String a = args[i];
            if (!a.startsWith("--")) {
                throw new IllegalArgumentException("bad argument " + a);
            }
            String name = a.substring(2);
            if (name.equals("tls") || name.equals("progress")) {
                opts.put(name, "true");
            } else if (i + 1 < args.length) {
                opts.put(name, args[++i]);
            } else {
                throw new IllegalArgumentException("missing value for " + a);
            }
        }
        return opts;
    }

    public static void main(String[] args) {
        long started = System.nanoTime();
        // The SDK logs to ${rocketmq.log.root}/rocketmq-client.log (default ~/logs/rocketmq);
        // it reads the property when its logger starts, i.e. after this line.
        String home = System.getenv("RMQ_E2E_HOME");
        if (System.getProperty("rocketmq.log.root") == null && home != null) {
            System.setProperty("rocketmq.log.root", Paths.get(home, "logs").toString());
        }
        String mode = args.length > 0 ? args[0] : "";
        Map<String, Object> head = new LinkedHashMap<>();
        head.put("sdk", "java");
        head.put("mode", mode);
        Map<String, Object> report;
        boolean ok;
        E2e driver = null;
        try {
            driver = new E2e(mode, parse(args, 1));
            head.put("sdk_version", sdkVersion());
            head.put("tls", driver.opts.containsKey("tls"));
            head.put("topic", driver.topic);
            head.put("group", driver.group);
            head.put("count", driver.count);
            switch (mode) {
                case "produce":
                    report = driver.produce();
                    break;
                case "simple-consume":
                    report = driver.simpleConsume();
                    break;
                case "push-consume":
                    report = driver.pushConsume();
                    break;
                case "fifo-produce":
                    report = new MessageTypes(driver).fifoProduce();
                    break;
                case "fifo-consume":
                    report = new MessageTypes(driver).fifoConsume();
                    break;
                case "delay-produce":
                    report = new MessageTypes(driver).delayProduce();
                    break;
                case "timed-consume":
                    report = new MessageTypes(driver).timedConsume();
                    break;
                case "recall":
                    report = new MessageTypes(driver).recall();
                    break;
                case "tx-produce":
                    report = new MessageTypes(driver).txProduce();
                    break;
                case "tx-check":
                    report = new MessageTypes(driver).txCheck();
                    break;
                case "priority-produce":
                    report = new MessageTypes(driver).priorityProduce();
                    break;
                case "retry-run":
                    report = new Consumption(driver).retryRun();
                    break;
                case "reset-simple-consume":
                    report = new OffsetReset(driver).simpleConsume();
                    break;
                case "reset-push-consume":
                    report = new OffsetReset(driver).pushConsume();
                    break;
                case "filter-produce":
                    report = new Filters(driver).produce();
                    break;
                case "filter-consume":
                    report = new Filters(driver).consume();
                    break;
                case "load-produce":
                    report = new ClusterLoad(driver).loadProduce();
                    break;
                case "drain-consume":
                    report = new ClusterLoad(driver).drainConsume();
                    break;
                default:
                    throw new IllegalArgumentException("unknown mode " + Json.quote(mode)
                        + " (produce | simple-consume | push-consume | fifo-produce | fifo-consume"
                        + " | delay-produce | timed-consume | recall | tx-produce | tx-check | priority-produce"
                        + " | retry-run | reset-simple-consume | reset-push-consume | filter-produce | filter-consume"
                        + " | load-produce | drain-consume)");
            }
            ok = Boolean.TRUE.equals(report.remove("ok"));
            report.put("errors", new ArrayList<>(driver.errors));
        } catch (Throwable e) {
            ok = false;
            report = new LinkedHashMap<>();
            List<String> errs = new ArrayList<>(driver == null ? List.of() : driver.errors);
            errs.add("unhandled: " + describe(e));
            report.put("errors", errs);
        }
        head.put("ok", ok);
        head.put("elapsed_ms", (System.nanoTime() - started) / 1_000_000);
        head.putAll(report);
        System.out.println("RESULT " + Json.encode(head));
        System.out.flush();
        // -Drmq.e2e.lingerMs=N: stay N ms before leaving (lets the OpenTelemetry Java agent of
        // tests/tracing_e2e.rs export its last spans; halt skips its shutdown hook).
        long linger = Long.getLong("rmq.e2e.lingerMs", 0L);
        if (linger > 0) {
            try {
                Thread.sleep(linger);
            } catch (InterruptedException ignored) {
                Thread.currentThread().interrupt();
            }
        }
        // SDK threads are not all daemons, and its shutdown hooks may block: leave at once.
        Runtime.getRuntime().halt(ok ? 0 : 1);
    }

    /** Just enough JSON for the RESULT line. */
    static final class Json {
        static String encode(Object v) {
            StringBuilder sb = new StringBuilder();
            write(sb, v);
            return sb.toString();
        }

        static void write(StringBuilder sb, Object v) {
            if (v == null) {
                sb.append("null");
            } else if (v instanceof String) {
                sb.append(quote((String) v));
            } else if (v instanceof Number || v instanceof Boolean) {
                sb.append(v);
            } else if (v instanceof Map) {
                sb.append('{');
                boolean first = true;
                for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                    if (!first) {
                        sb.append(',');
                    }
                    first = false;
                    sb.append(quote(String.valueOf(e.getKey()))).append(':');
                    write(sb, e.getValue());
                }
                sb.append('}');
            } else if (v instanceof Iterable) {
                sb.append('[');
                boolean first = true;
                for (Object o : (Iterable<?>) v) {
                    if (!first) {
                        sb.append(',');
                    }
                    first = false;
                    write(sb, o);
                }
                sb.append(']');
            } else {
                sb.append(quote(v.toString()));
            }
        }

        static String quote(String s) {
            StringBuilder sb = new StringBuilder("\"");
            for (char c : s.toCharArray()) {
                switch (c) {
                    case '"': sb.append("\\\""); break;
                    case '\\': sb.append("\\\\"); break;
                    case '\n': sb.append("\\n"); break;
                    case '\r': sb.append("\\r"); break;
                    case '\t': sb.append("\\t"); break;
                    default:
                        if (c < 0x20) {
                            sb.append(String.format("\\u%04x", (int) c));
                        } else {
                            sb.append(c);
                        }
                }
            }
            return sb.append('"').toString();
        }
    }
}

package org.rmqgateway.e2e;

import java.lang.reflect.Method;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.rocketmq.client.apis.consumer.ConsumeResult;
import org.apache.rocketmq.client.apis.consumer.FilterExpression;
import org.apache.rocketmq.client.apis.consumer.FilterExpressionType;
import org.apache.rocketmq.client.apis.consumer.PushConsumer;
import org.apache.rocketmq.client.apis.consumer.PushConsumerBuilder;
import org.apache.rocketmq.client.apis.consumer.SimpleConsumer;
import org.apache.rocketmq.client.apis.message.Message;
import org.apache.rocketmq.client.apis.message.MessageBuilder;
import org.apache.rocketmq.client.apis.message.MessageView;
import org.apache.rocketmq.client.apis.producer.Producer;
import org.apache.rocketmq.client.apis.producer.ProducerBuilder;
import org.apache.rocketmq.client.apis.producer.SendReceipt;
import org.apache.rocketmq.client.apis.producer.Transaction;
import org.apache.rocketmq.client.apis.producer.TransactionChecker;
import org.apache.rocketmq.client.apis.producer.TransactionResolution;

/**
 * The message-type modes of {@code sdk/MESSAGE_TYPES.md} (FIFO, delay/timer, recall,
 * transactions, priority) for rocketmq-client-java. Each method returns the mode's RESULT fields plus
 * {@code ok}; {@link E2e#main} adds the common ones and prints the line.
 *
 * <p>The same source builds against 5.2.0 and 5.0.7: what 5.0.7 lacks (recall, the FIFO consume
 * accelerator, message priority) is looked up by reflection. Times are epoch milliseconds; intervals that are
 * compared with each other (FIFO overlaps and order) use {@link System#nanoTime}.
 */
final class MessageTypes {
    /** Long-polling wait of the SimpleConsumer (short, so a linger ends close to its time). */
    private static final Duration AWAIT = Duration.ofSeconds(5);
    private static final Duration INVISIBLE = Duration.ofSeconds(30);
    /** After the last listener call: the PushConsumer acks asynchronously, let the acks go out. */
    private static final long ACK_GRACE_MS = 2000;
    /** tx-check: how long it keeps running after the last expected check (its EndTransactions). */
    private static final long CHECK_GRACE_MS = 3000;
    /** {@code MessageBuilder.setPriority(int)} (5.2.0), or null where the SDK has none (5.0.7). */
    private static final Method SET_PRIORITY = method(MessageBuilder.class, "setPriority", int.class);
    /** {@code MessageView.getPriority()} (5.2.0), or null where the SDK has none (5.0.7). */
    private static final Method GET_PRIORITY = method(MessageView.class, "getPriority");

    private final E2e d;

    MessageTypes(E2e driver) {
        this.d = driver;
    }

    private int intOpt(String name, int dflt) {
        return Integer.parseInt(d.opt(name, String.valueOf(dflt)));
    }

    private long now() {
        return System.currentTimeMillis();
    }

    private Producer producer(TransactionChecker checker) throws Exception {
        ProducerBuilder b = d.provider.newProducerBuilder().setClientConfiguration(d.config()).setTopics(d.topic);
        if (checker != null) {
            b.setTransactionChecker(checker);
        }
        return b.build();
    }

    /** The SDK's recall handle of a send receipt (5.2.0 has {@code getRecallHandle}), or null. */
    private static String recallHandle(SendReceipt receipt) {
        try {
            return (String) SendReceipt.class.getMethod("getRecallHandle").invoke(receipt);
        } catch (ReflectiveOperationException e) {
            return null;
        }
    }

    /** A public method of {@code type}, or null if this SDK release lacks it. */
    private static Method method(Class<?> type, String name, Class<?>... params) {
        try {
            return type.getMethod(name, params);
        } catch (NoSuchMethodException e) {
            return null;
        }
    }

    /** The priority the SDK shows on a received message, if this release has the API and it is set. */
    @SuppressWarnings("unchecked")
    private static Optional<Integer> priority(MessageView mv) {
        if (GET_PRIORITY == null) {
            return Optional.empty();
        }
        try {
            return (Optional<Integer>) GET_PRIORITY.invoke(mv);
        } catch (ReflectiveOperationException e) {
            return Optional.empty();
        }
    }

    private static void sleep(long ms) {
        if (ms <= 0) {
            return;
        }
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    // ------------------------------------------------------------------------------ fifo-produce

    /**
     * Message i goes to group {@code <prefix>-g<i % G>} with sequence {@code i / G}; one
     * synchronous send after the other, so each group's messages are sent in sequence order.
     */
    Map<String, Object> fifoProduce() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        int groups = intOpt("groups", 4);
        List<String> ids = new ArrayList<>();
        r.put("ids", ids);
        Producer producer;
        try {
            producer = producer(null);
        } catch (Exception e) {
            d.error("startup: " + E2e.describe(e));
            r.put("sent", 0);
            return r;
        }
        for (int i = 0; i < d.count && d.timeLeft(); i++) {
            String group = d.prefix + "-g" + (i % groups);
            Message m = d.provider.newMessageBuilder()
                .setTopic(d.topic)
                .setTag(d.tag)
                .setKeys(d.prefix + "-key-" + i)
                .setMessageGroup(group)
                .setBody((d.prefix + "|" + group + "|" + (i / groups)).getBytes(StandardCharsets.UTF_8))
                .build();
            try {
                ids.add(producer.send(m).getMessageId().toString());
            } catch (Exception e) {
                // A gap would break the group's order: stop here.
                d.error("send #" + i + " (" + group + "): " + E2e.describe(e));
                break;
            }
        }
        r.put("sent", ids.size());
        r.put("shutdown_error", E2e.closeBounded(producer, 15));
        r.put("ok", ids.size() == d.count);
        return r;
    }

    // ------------------------------------------------------------------------------ fifo-consume

    /** One listener call. */
    private static final class Call {
        final String group;
        final int seq;
        final long startNanos;
        final long endNanos;
        final boolean success;

        Call(String group, int seq, long startNanos, long endNanos, boolean success) {
            this.group = group;
            this.seq = seq;
            this.startNanos = startNanos;
            this.endNanos = endNanos;
            this.success = success;
        }
    }

    /**
     * C PushConsumers of the orderly group; the listener fails on purpose (--fail-every, the
     * poison group), may hold each message (--hold-ms), and records every call. The order,
     * overlap and duplicate figures are computed from the calls at the end.
     */
    Map<String, Object> fifoConsume() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        int consumers = intOpt("consumers", 2);
        int failEvery = intOpt("fail-every", 0);
        long holdMs = Long.parseLong(d.opt("hold-ms", "0"));
        int expect = intOpt("expect", d.count);
        String poison = d.opt("poison-group", "");

        List<Call> calls = Collections.synchronizedList(new ArrayList<>());
        Set<String> succeeded = ConcurrentHashMap.newKeySet();
        Set<String> failedOnce = ConcurrentHashMap.newKeySet();
        AtomicInteger maxAttempt = new AtomicInteger();
        long startNanos = System.nanoTime();
        List<PushConsumer> started = new ArrayList<>();
        boolean accelerated = false;
        try {
            for (int c = 0; c < consumers; c++) {
                PushConsumerBuilder b = d.provider.newPushConsumerBuilder()
                    .setClientConfiguration(d.config())
                    .setConsumerGroup(d.group)
                    .setSubscriptionExpressions(Map.of(d.topic, new FilterExpression("*", FilterExpressionType.TAG)))
                    .setMessageListener(mv -> {
                        long t0 = System.nanoTime();
                        maxAttempt.accumulateAndGet(mv.getDeliveryAttempt(), Math::max);
                        String[] parts = E2e.body(mv).split("\\|", -1);
                        if (parts.length != 3 || !parts[0].equals(d.prefix)) {
                            d.error("unexpected body " + E2e.Json.quote(E2e.body(mv)) + " (" + mv.getMessageId() + ")");
                            return ConsumeResult.SUCCESS;
                        }
                        String group = parts[1];
                        int seq;
                        try {
                            seq = Integer.parseInt(parts[2]);
                        } catch (NumberFormatException e) {
                            d.error("bad sequence in body " + E2e.Json.quote(E2e.body(mv)));
                            return ConsumeResult.SUCCESS;
                        }
                        boolean success = !group.equals(poison)
                            && !(failEvery > 0 && (seq + 1) % failEvery == 0 && failedOnce.add(group + "|" + seq));
                        sleep(holdMs);
                        calls.add(new Call(group, seq, t0, System.nanoTime(), success));
                        if (success) {
                            succeeded.add(group + "|" + seq);
                        }
                        return success ? ConsumeResult.SUCCESS : ConsumeResult.FAILURE;
                    });
                // 5.2.0: messages of different groups of one queue are consumed in parallel (the
                // SDK otherwise consumes a queue strictly one message at a time, whatever its group).
                accelerated = enableFifoAccelerator(b);
                started.add(b.build());
            }
        } catch (Exception e) {
            d.error("startup: " + E2e.describe(e));
        }
        while (started.size() == consumers && succeeded.size() < expect && d.timeLeft()) {
            Thread.sleep(50);
        }
        boolean done = succeeded.size() >= expect;
        Thread.sleep(ACK_GRACE_MS);

        List<Call> all;
        synchronized (calls) {
            all = new ArrayList<>(calls);
        }
        Map<String, List<Call>> byGroup = new TreeMap<>();
        for (Call c : all) {
            byGroup.computeIfAbsent(c.group, g -> new ArrayList<>()).add(c);
        }
        int reorderings = 0;
        int overlaps = 0;
        Set<String> duplicates = new TreeSet<>();
        Map<String, Long> groupDone = new TreeMap<>();
        for (Map.Entry<String, List<Call>> e : byGroup.entrySet()) {
            List<Call> list = e.getValue();
            list.sort(Comparator.comparingLong((Call c) -> c.startNanos));
            for (int i = 0; i < list.size(); i++) {
                for (int j = i + 1; j < list.size() && list.get(j).startNanos < list.get(i).endNanos; j++) {
                    overlaps++;
                }
            }
            if (e.getKey().equals(poison)) {
                continue;
            }
            list.sort(Comparator.comparingLong((Call c) -> c.endNanos));
            int previous = -1;
            Set<Integer> seen = new TreeSet<>();
            for (Call c : list) {
                if (!c.success) {
                    continue;
                }
                if (c.seq != previous + 1) {
                    reorderings++;
                }
                previous = c.seq;
                if (!seen.add(c.seq)) {
                    duplicates.add(c.group + "|" + c.seq);
                }
                groupDone.put(c.group, (c.endNanos - startNanos) / 1_000_000);
            }
        }
        List<Call> poisonCalls = byGroup.getOrDefault(poison, List.of());
        int failedOnPurpose = 0;
        for (Call c : all) {
            failedOnPurpose += !c.success && !c.group.equals(poison) ? 1 : 0;
        }
        r.put("succeeded", succeeded.size());
        r.put("reorderings", reorderings);
        r.put("overlaps", overlaps);
        r.put("duplicates", new ArrayList<>(duplicates));
        r.put("group_done_ms", groupDone);
        r.put("poison_calls", poisonCalls.size());
        // Beyond the contract: when the poison group's calls began and ended (ms from the start).
        if (!poisonCalls.isEmpty()) {
            long first = poisonCalls.stream().mapToLong(c -> c.startNanos).min().getAsLong();
            long last = poisonCalls.stream().mapToLong(c -> c.endNanos).max().getAsLong();
            r.put("poison_first_ms", (first - startNanos) / 1_000_000);
            r.put("poison_last_ms", (last - startNanos) / 1_000_000);
        }
        r.put("failed_on_purpose", failedOnPurpose);
        r.put("max_delivery_attempt", maxAttempt.get());
        r.put("received", all.size());
        r.put("fifo_accelerator", accelerated);
        r.put("shutdown_error", closeAll(started, 30));
        r.put("ok", done);
        return r;
    }

    /** Calls {@code setEnableFifoConsumeAccelerator(true)} where the SDK has it (5.2.0, not 5.0.7). */
    private static boolean enableFifoAccelerator(PushConsumerBuilder b) {
        try {
            b.getClass().getMethod("setEnableFifoConsumeAccelerator", boolean.class).invoke(b, true);
            return true;
        } catch (ReflectiveOperationException e) {
            return false;
        }
    }

    /** Closes the clients in parallel (a PushConsumer's shutdown waits for its long polls). */
    private static String closeAll(List<? extends AutoCloseable> clients, int limitSecs) throws InterruptedException {
        List<String> outcome = Collections.synchronizedList(new ArrayList<>());
        List<Thread> threads = new ArrayList<>();
        for (AutoCloseable c : clients) {
            Thread t = new Thread(() -> {
                String e = E2e.closeBounded(c, limitSecs);
                if (e != null) {
                    outcome.add(e);
                }
            }, "e2e-close-all");
            t.setDaemon(true);
            t.start();
            threads.add(t);
        }
        for (Thread t : threads) {
            t.join((limitSecs + 1) * 1000L);
        }
        return outcome.isEmpty() ? null : String.join("; ", outcome);
    }

    // ----------------------------------------------------------------------------- delay-produce

    /**
     * For each delay d (ms from now, may be negative or beyond the server's maximum) and
     * j = 0..count-1 one message due at now + d. A refused send is recorded under
     * {@code rejected} and the run goes on; {@code ok} means every send got an answer in time.
     */
    Map<String, Object> delayProduce() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        List<String> ids = new ArrayList<>();
        Map<String, Long> deliverAt = new LinkedHashMap<>();
        Map<String, String> handles = new LinkedHashMap<>();
        Map<String, String> rejected = new LinkedHashMap<>();
        r.put("ids", ids);
        r.put("deliver_at", deliverAt);
        r.put("recall_handles", handles);
        r.put("rejected", rejected);
        String spec = d.opt("delays-ms", "");
        if (spec.isEmpty()) {
            throw new IllegalArgumentException("--delays-ms is required");
        }
        long[] delays = java.util.Arrays.stream(spec.split(",")).mapToLong(s -> Long.parseLong(s.trim())).toArray();
        Producer producer;
        try {
            producer = producer(null);
        } catch (Exception e) {
            d.error("startup: " + E2e.describe(e));
            r.put("sent", 0);
            return r;
        }
        int answered = 0;
        for (long delay : delays) {
            for (int j = 0; j < d.count && d.timeLeft(); j++) {
                long at = now() + delay;
                Message m = d.provider.newMessageBuilder()
                    .setTopic(d.topic)
                    .setTag(d.tag)
                    .setKeys(d.prefix + "-key-" + delay + "-" + j)
                    .setDeliveryTimestamp(at)
                    .setBody((d.prefix + "|" + delay + "|" + at + "|" + j).getBytes(StandardCharsets.UTF_8))
                    .build();
                try {
                    SendReceipt receipt = producer.send(m);
                    String id = receipt.getMessageId().toString();
                    ids.add(id);
                    deliverAt.put(id, at);
                    String handle = recallHandle(receipt);
                    if (handle != null && !handle.isEmpty()) { // Apache: "" for a message due now
                        handles.put(id, handle);
                    }
                } catch (Exception e) {
                    rejected.putIfAbsent(String.valueOf(delay), E2e.describe(e));
                }
                answered++;
            }
        }
        r.put("sent", ids.size());
        r.put("shutdown_error", E2e.closeBounded(producer, 15));
        r.put("ok", answered == delays.length * d.count);
        return r;
    }

    // ----------------------------------------------------------------------------- timed-consume

    /**
     * A SimpleConsumer ({@code *}) that records when each message first arrived, acks it, and
     * stops --linger-ms after --expect distinct ids arrived (or at the timeout).
     */
    Map<String, Object> timedConsume() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        int expect = intOpt("expect", d.count);
        long lingerMs = Long.parseLong(d.opt("linger-ms", "0"));
        Map<String, Long> receivedAt = new LinkedHashMap<>();
        Map<String, String> bodies = new LinkedHashMap<>();
        Map<String, Long> deliveryTimestamp = new LinkedHashMap<>();
        Map<String, Integer> priorities = new LinkedHashMap<>();
        Set<String> duplicates = new TreeSet<>();
        int received = 0;
        int receiveErrors = 0;
        SimpleConsumer consumer = null;
        try {
            consumer = d.provider.newSimpleConsumerBuilder()
                .setClientConfiguration(d.config())
                .setConsumerGroup(d.group)
                .setAwaitDuration(AWAIT)
                .setSubscriptionExpressions(Map.of(d.topic, new FilterExpression("*", FilterExpressionType.TAG)))
                .build();
        } catch (Exception e) {
            d.error("startup: " + E2e.describe(e));
        }
        long lingerEnd = Long.MAX_VALUE;
        while (consumer != null && d.timeLeft()) {
            if (receivedAt.size() >= expect) {
                lingerEnd = Math.min(lingerEnd, now() + lingerMs);
                if (now() >= lingerEnd) {
                    break;
                }
            }
            List<MessageView> batch;
            try {
                batch = consumer.receive(16, INVISIBLE);
            } catch (Exception e) {
                receiveErrors++;
                d.error("receive: " + E2e.describe(e));
                Thread.sleep(500);
                continue;
            }
            long at = now();
            for (MessageView mv : batch) {
                received++;
                String id = mv.getMessageId().toString();
                if (receivedAt.putIfAbsent(id, at) == null) {
                    bodies.put(id, E2e.body(mv));
                    mv.getDeliveryTimestamp().ifPresent(ts -> deliveryTimestamp.put(id, ts));
                    priority(mv).ifPresent(p -> priorities.put(id, p));
                } else {
                    duplicates.add(id);
                }
                try {
                    consumer.ack(mv);
                } catch (Exception e) {
                    d.error("ack " + id + ": " + E2e.describe(e));
                }
            }
        }
        r.put("received", received);
        r.put("ids", new ArrayList<>(receivedAt.keySet()));
        r.put("received_at", receivedAt);
        r.put("bodies", bodies);
        r.put("delivery_timestamp", deliveryTimestamp);
        // No message_type: the Java SDK's MessageView does not expose the type it decoded.
        r.put("priority", priorities);
        r.put("duplicates", new ArrayList<>(duplicates));
        r.put("receive_errors", receiveErrors);
        if (consumer != null) {
            r.put("shutdown_error", E2e.closeBounded(consumer, 15));
        }
        r.put("ok", receivedAt.size() >= expect);
        return r;
    }

    // -------------------------------------------------------------------------- priority-produce

    /**
     * For each priority p of --priorities (default 0,5,9), lowest first (so the lowest are the
     * oldest), and j = 0..count-1 one message with priority p: one synchronous send after the
     * other. An SDK release without a priority API (5.0.7) reports {@code priority_supported:
     * false} and sends nothing.
     */
    Map<String, Object> priorityProduce() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        if (SET_PRIORITY == null) {
            r.put("priority_supported", false);
            r.put("sent", 0);
            r.put("ok", true);
            return r;
        }
        r.put("priority_supported", true);
        int[] levels = Arrays.stream(d.opt("priorities", "0,5,9").split(","))
            .mapToInt(s -> Integer.parseInt(s.trim()))
            .sorted()
            .toArray();
        List<String> ids = new ArrayList<>();
        Map<String, Integer> sentPriority = new LinkedHashMap<>();
        r.put("ids", ids);
        r.put("priority", sentPriority);
        Producer producer;
        try {
            producer = producer(null);
        } catch (Exception e) {
            d.error("startup: " + E2e.describe(e));
            r.put("sent", 0);
            return r;
        }
        for (int p : levels) {
            for (int j = 0; j < d.count && d.timeLeft(); j++) {
                MessageBuilder b = d.provider.newMessageBuilder()
                    .setTopic(d.topic)
                    .setTag(d.tag)
                    .setKeys(d.prefix + "-key-" + p + "-" + j)
                    .setBody((d.prefix + "|" + p + "|" + j).getBytes(StandardCharsets.UTF_8));
                try {
                    SET_PRIORITY.invoke(b, p);
                    String id = producer.send(b.build()).getMessageId().toString();
                    ids.add(id);
                    sentPriority.put(id, p);
                } catch (Exception e) {
                    d.error("send priority " + p + " #" + j + ": " + E2e.describe(e));
                }
            }
        }
        r.put("sent", ids.size());
        r.put("shutdown_error", E2e.closeBounded(producer, 15));
        r.put("ok", ids.size() == levels.length * d.count);
        return r;
    }

    // ------------------------------------------------------------------------------------ recall

    /** Sends A and B due --delay-ms from now, then recalls A with the handle of its receipt. */
    Map<String, Object> recall() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        Method recall;
        try {
            recall = Producer.class.getMethod("recallMessage", String.class, String.class);
        } catch (NoSuchMethodException e) {
            r.put("recall_supported", false); // rocketmq-client-java before 5.1 has no recall
            r.put("ok", true);
            return r;
        }
        r.put("recall_supported", true);
        long delayMs = Long.parseLong(d.opt("delay-ms", "5000"));
        boolean recallOk = false;
        Producer producer = producer(null);
        try {
            long at = now() + delayMs;
            SendReceipt a = producer.send(recallMessage("A", at));
            SendReceipt b = producer.send(recallMessage("B", at));
            r.put("recalled_id", a.getMessageId().toString());
            r.put("kept_id", b.getMessageId().toString());
            String handle = recallHandle(a);
            if (handle == null || handle.isEmpty()) {
                d.error("A's send receipt carries no recall handle");
            } else {
                recall.invoke(producer, d.topic, handle);
                recallOk = true;
            }
        } catch (Exception e) {
            d.error("recall: " + E2e.describe(e));
        }
        r.put("recall_ok", recallOk);
        r.put("shutdown_error", E2e.closeBounded(producer, 15));
        r.put("ok", recallOk);
        return r;
    }

    private Message recallMessage(String which, long at) {
        return d.provider.newMessageBuilder()
            .setTopic(d.topic)
            .setTag(d.tag)
            .setKeys(d.prefix + "-key-recall-" + which)
            .setDeliveryTimestamp(at)
            .setBody((d.prefix + "|recall|" + which).getBytes(StandardCharsets.UTF_8))
            .build();
    }

    // -------------------------------------------------------------------------------- tx-produce

    /**
     * count transactions of one message each (checker: UNKNOWN); after --hold-ms they are all
     * committed or rolled back, or (orphan) left open: the RESULT is printed and the process
     * halts without closing the producer.
     */
    Map<String, Object> txProduce() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        String resolution = d.opt("resolution", "commit");
        if (!List.of("commit", "rollback", "orphan").contains(resolution)) {
            throw new IllegalArgumentException("--resolution must be commit, rollback or orphan");
        }
        long holdMs = Long.parseLong(d.opt("hold-ms", "0"));
        List<String> ids = new ArrayList<>();
        Map<String, Long> endedAt = new LinkedHashMap<>();
        r.put("ids", ids);
        r.put("ended_at", endedAt);
        AtomicInteger checks = new AtomicInteger();
        Producer producer;
        try {
            producer = producer(mv -> {
                checks.incrementAndGet();
                return TransactionResolution.UNKNOWN;
            });
        } catch (Exception e) {
            d.error("startup: " + E2e.describe(e));
            r.put("sent", 0);
            return r;
        }
        Map<String, Transaction> open = new LinkedHashMap<>();
        for (int i = 0; i < d.count && d.timeLeft(); i++) {
            Message m = d.provider.newMessageBuilder()
                .setTopic(d.topic)
                .setTag(d.tag)
                .setKeys(d.prefix + "-key-" + i)
                .setBody((d.prefix + "-" + i).getBytes(StandardCharsets.UTF_8))
                .build();
            try {
                Transaction tx = producer.beginTransaction();
                String id = producer.send(m, tx).getMessageId().toString();
                ids.add(id);
                open.put(id, tx);
            } catch (Exception e) {
                d.error("send #" + i + ": " + E2e.describe(e));
            }
        }
        r.put("sent", ids.size());
        sleep(holdMs);
        if (resolution.equals("orphan")) {
            r.put("ok", ids.size() == d.count);
            return r; // E2e.main prints the RESULT and halts: no EndTransaction, no shutdown
        }
        int ended = 0;
        for (Map.Entry<String, Transaction> e : open.entrySet()) {
            try {
                if (resolution.equals("commit")) {
                    e.getValue().commit();
                } else {
                    e.getValue().rollback();
                }
                endedAt.put(e.getKey(), now());
                ended++;
            } catch (Exception ex) {
                d.error(resolution + " " + e.getKey() + ": " + E2e.describe(ex));
            }
        }
        r.put("check_calls", checks.get());
        r.put("shutdown_error", E2e.closeBounded(producer, 15));
        r.put("ok", ids.size() == d.count && ended == d.count);
        return r;
    }

    // ---------------------------------------------------------------------------------- tx-check

    /**
     * A transactional producer of the topic that commits, when asked, every message whose body
     * starts with {@code <prefix>-} (the orphans of an earlier tx-produce) and records each check.
     */
    Map<String, Object> txCheck() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        int expect = intOpt("expect", d.count);
        Map<String, Long> checkedAt = new ConcurrentHashMap<>();
        AtomicInteger calls = new AtomicInteger();
        String mine = d.prefix + "-";
        Producer producer = null;
        try {
            producer = producer(mv -> {
                calls.incrementAndGet();
                if (!E2e.body(mv).startsWith(mine)) {
                    return TransactionResolution.UNKNOWN;
                }
                checkedAt.putIfAbsent(mv.getMessageId().toString(), now());
                return TransactionResolution.COMMIT;
            });
        } catch (Exception e) {
            d.error("startup: " + E2e.describe(e));
        }
        while (producer != null && checkedAt.size() < expect && d.timeLeft()) {
            Thread.sleep(50);
        }
        boolean done = checkedAt.size() >= expect;
        if (done) {
            Thread.sleep(CHECK_GRACE_MS);
        }
        Map<String, Long> inOrder = new LinkedHashMap<>();
        new ArrayList<>(checkedAt.entrySet()).stream()
            .sorted(Map.Entry.comparingByValue())
            .forEach(e -> inOrder.put(e.getKey(), e.getValue()));
        r.put("checked", inOrder.size());
        r.put("checked_at", inOrder);
        r.put("check_calls", calls.get());
        if (producer != null) {
            r.put("shutdown_error", E2e.closeBounded(producer, 15));
        }
        r.put("ok", done);
        return r;
    }
}

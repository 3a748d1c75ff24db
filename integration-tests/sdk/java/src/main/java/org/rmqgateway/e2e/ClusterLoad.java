package org.rmqgateway.e2e;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.rocketmq.client.apis.consumer.FilterExpression;
import org.apache.rocketmq.client.apis.consumer.FilterExpressionType;
import org.apache.rocketmq.client.apis.consumer.SimpleConsumer;
import org.apache.rocketmq.client.apis.message.Message;
import org.apache.rocketmq.client.apis.message.MessageView;
import org.apache.rocketmq.client.apis.producer.Producer;
import org.apache.rocketmq.client.apis.producer.ProducerBuilder;
import org.apache.rocketmq.client.apis.producer.SendReceipt;

/**
 * The cluster test modes (gateways failing, restarting and partitioned under load):
 *
 * <pre>
 * load-produce  --count N --rate R [--inflight W] [--max-attempts A]
 *     sends bodies {@code <prefix>-<i>} (i = 0..N-1) with sendAsync, paced at R messages/s, at most
 *     W (default 16) in flight; the SDK retries a failed send itself (A attempts, default the
 *     SDK's 3), nothing is retried on top. Prints "PROGRESS received=K" (K = acked so far) as it
 *     goes. RESULT: sent, failed, ids (index i: the acked message id, "" if that send failed),
 *     sends ([[i, start epoch ms, end epoch ms, ok 0/1, queue id, queue offset] ...]: the
 *     position the receipt names, -1 if unknown or failed), failures (first 50 errors).
 * drain-consume --count N [--idle-secs S] [--receive-batch B]
 *     a SimpleConsumer (tag --tag) receives and acks until it has seen N distinct bodies
 *     {@code <prefix>-<i>}, or nothing new came for S seconds (default 15), or the timeout.
 *     RESULT: received (distinct bodies), deliveries ([[message id, body index, queue id,
 *     queue offset] ...] for every delivery, redeliveries included; -1 where the SDK's internal
 *     MessageViewImpl does not tell), ack_failed, receive_errors.
 * </pre>
 */
final class ClusterLoad {
    private final E2e d;

    ClusterLoad(E2e driver) {
        this.d = driver;
    }

    private Message message(int i) {
        return d.provider.newMessageBuilder()
            .setTopic(d.topic)
            .setTag(d.tag)
            .setKeys(d.prefix + "-key-" + i)
            .setBody((d.prefix + "-" + i).getBytes(StandardCharsets.UTF_8))
            .build();
    }

    Map<String, Object> loadProduce() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        double rate = Double.parseDouble(d.opt("rate", "100"));
        int inflight = Integer.parseInt(d.opt("inflight", "16"));
        String maxAttempts = d.opt("max-attempts", "");
        if (rate <= 0 || inflight < 1) {
            throw new IllegalArgumentException("--rate must be > 0 and --inflight >= 1");
        }
        String[] ids = new String[d.count];
        Arrays.fill(ids, "");
        long[][] sends = new long[d.count][];
        List<String> failures = new ArrayList<>();
        AtomicInteger acked = new AtomicInteger();
        AtomicInteger failed = new AtomicInteger();
        ProducerBuilder builder = d.provider.newProducerBuilder().setClientConfiguration(d.config()).setTopics(d.topic);
        if (!maxAttempts.isEmpty()) {
            builder.setMaxAttempts(Integer.parseInt(maxAttempts));
        }
        Producer producer;
        try {
            producer = builder.build();
        } catch (Exception e) {
            d.error("startup: " + E2e.describe(e));
            r.put("sent", 0);
            r.put("failed", d.count);
            r.put("ids", List.of());
            return r;
        }
        Semaphore window = new Semaphore(inflight);
        List<CompletableFuture<SendReceipt>> pending = new ArrayList<>();
        long startNanos = System.nanoTime();
        long intervalNanos = (long) (1e9 / rate);
        int lastProgress = -1;
        for (int i = 0; i < d.count && d.timeLeft(); i++) {
            long due = startNanos + i * intervalNanos;
            long wait = due - System.nanoTime();
            if (wait > 0) {
                Thread.sleep(wait / 1_000_000, (int) (wait % 1_000_000));
            }
            int k = acked.get();
            if (k != lastProgress) {
                System.out.println("PROGRESS received=" + k);
                System.out.flush();
                lastProgress = k;
            }
            if (!window.tryAcquire(Math.max(1, d.deadlineNanos - System.nanoTime()), TimeUnit.NANOSECONDS)) {
                break;
            }
            final int index = i;
            final long begun = System.currentTimeMillis();
            CompletableFuture<SendReceipt> f;
            try {
                f = producer.sendAsync(message(i));
            } catch (Exception e) {
                f = CompletableFuture.failedFuture(e);
            }
            pending.add(f.whenComplete((receipt, e) -> {
                long ended = System.currentTimeMillis();
                synchronized (sends) {
                    if (e != null) {
                        failed.incrementAndGet();
                        if (failures.size() < 50) {
                            failures.add("#" + index + " at " + ended + ": " + E2e.describe(e));
                        }
                        sends[index] = new long[] {index, begun, ended, 0, -1, -1};
                    } else {
                        acked.incrementAndGet();
                        ids[index] = receipt.getMessageId().toString();
                        long[] at = receiptPosition(receipt);
                        sends[index] = new long[] {index, begun, ended, 1, at[0], at[1]};
                    }
                }
                window.release();
            }));
        }
        for (CompletableFuture<SendReceipt> f : pending) {
            try {
                f.get(Math.max(1, d.deadlineNanos - System.nanoTime()), TimeUnit.NANOSECONDS);
            } catch (Exception e) {
                // recorded by whenComplete (a timeout leaves the send without an outcome)
            }
        }
        System.out.println("PROGRESS received=" + acked.get());
        List<List<Long>> timeline = new ArrayList<>();
        synchronized (sends) {
            for (long[] s : sends) {
                if (s != null) {
                    timeline.add(List.of(s[0], s[1], s[2], s[3], s[4], s[5]));
                }
            }
            r.put("sent", acked.get());
            r.put("failed", d.count - acked.get());
            r.put("ids", new ArrayList<>(Arrays.asList(ids)));
            r.put("sends", timeline);
            r.put("failures", new ArrayList<>(failures));
        }
        r.put("shutdown_error", E2e.closeBounded(producer, 15));
        r.put("ok", acked.get() == d.count);
        return r;
    }

    /** SendReceiptImpl.getMessageQueue().getQueueId() and getOffset() (internal): where the
     * gateway says it stored the message; -1 where unknown. */
    private static long[] receiptPosition(SendReceipt receipt) {
        long queue = -1;
        long offset = -1;
        try {
            Object mq = receipt.getClass().getMethod("getMessageQueue").invoke(receipt);
            queue = ((Number) mq.getClass().getMethod("getQueueId").invoke(mq)).longValue();
        } catch (ReflectiveOperationException | RuntimeException e) {
            // unknown
        }
        try {
            offset = ((Number) receipt.getClass().getMethod("getOffset").invoke(receipt)).longValue();
        } catch (ReflectiveOperationException | RuntimeException e) {
            // unknown
        }
        return new long[] {queue, offset};
    }

    /** MessageViewImpl.getMessageQueue().getQueueId() and getOffset() (internal), or -1. */
    private static long[] position(MessageView mv) {
        long queue = -1;
        long offset = -1;
        try {
            Object mq = mv.getClass().getMethod("getMessageQueue").invoke(mv);
            queue = ((Number) mq.getClass().getMethod("getQueueId").invoke(mq)).longValue();
        } catch (ReflectiveOperationException | RuntimeException e) {
            // unknown
        }
        try {
            offset = ((Number) mv.getClass().getMethod("getOffset").invoke(mv)).longValue();
        } catch (ReflectiveOperationException | RuntimeException e) {
            // unknown
        }
        return new long[] {queue, offset};
    }

    Map<String, Object> drainConsume() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        long idleNanos = (long) (Double.parseDouble(d.opt("idle-secs", "15")) * 1e9);
        int batch = Integer.parseInt(d.opt("receive-batch", "32"));
        java.util.Set<Integer> seen = new java.util.HashSet<>();
        List<List<Object>> deliveries = new ArrayList<>();
        int ackFailed = 0;
        int receiveErrors = 0;
        SimpleConsumer consumer;
        try {
            consumer = d.provider.newSimpleConsumerBuilder()
                .setClientConfiguration(d.config())
                .setConsumerGroup(d.group)
                .setAwaitDuration(Duration.ofSeconds(5))
                .setSubscriptionExpressions(Map.of(d.topic, new FilterExpression(d.tag, FilterExpressionType.TAG)))
                .build();
        } catch (Exception e) {
            d.error("startup: " + E2e.describe(e));
            r.put("received", 0);
            r.put("deliveries", deliveries);
            return r;
        }
        long lastNew = System.nanoTime();
        while (seen.size() < d.count && d.timeLeft() && System.nanoTime() - lastNew < idleNanos) {
            List<MessageView> messages;
            try {
                messages = consumer.receive(batch, Duration.ofSeconds(30));
            } catch (Exception e) {
                receiveErrors++;
                d.error("receive: " + E2e.describe(e));
                Thread.sleep(300);
                continue;
            }
            for (MessageView mv : messages) {
                String text = E2e.body(mv);
                int index = -1;
                if (text.startsWith(d.prefix + "-")) {
                    try {
                        index = Integer.parseInt(text.substring(d.prefix.length() + 1));
                    } catch (NumberFormatException e) {
                        index = -1;
                    }
                }
                long[] pos = position(mv);
                deliveries.add(List.of(mv.getMessageId().toString(), index, pos[0], pos[1]));
                if (index >= 0 && seen.add(index)) {
                    lastNew = System.nanoTime();
                }
                try {
                    d.ackRetrying(consumer, mv);
                } catch (Exception e) {
                    ackFailed++;
                    d.error("ack " + mv.getMessageId() + ": " + E2e.describe(e));
                }
            }
            if (d.progressWanted()) {
                System.out.println("PROGRESS received=" + seen.size());
                System.out.flush();
            }
        }
        r.put("received", seen.size());
        r.put("deliveries", deliveries);
        r.put("ack_failed", ackFailed);
        r.put("receive_errors", receiveErrors);
        r.put("shutdown_error", E2e.closeBounded(consumer, 15));
        r.put("ok", seen.size() >= d.count && ackFailed == 0);
        return r;
    }
}

package org.rmqgateway.e2e;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.rocketmq.client.apis.consumer.ConsumeResult;
import org.apache.rocketmq.client.apis.consumer.FilterExpression;
import org.apache.rocketmq.client.apis.consumer.FilterExpressionType;
import org.apache.rocketmq.client.apis.consumer.PushConsumer;
import org.apache.rocketmq.client.apis.consumer.SimpleConsumer;
import org.apache.rocketmq.client.apis.message.MessageView;

/**
 * The modes {@code reset-simple-consume} and {@code reset-push-consume} of
 * {@code sdk/MESSAGE_TYPES.md}: one consumer that keeps running while the test resets its
 * group's offset, recording every delivery (redeliveries included) in order.
 */
final class OffsetReset {
    private static final Duration AWAIT = Duration.ofSeconds(5);
    private static final Duration INVISIBLE = Duration.ofSeconds(30);
    /** The PushConsumer acks after the listener returns: let the last acks go out. */
    private static final long ACK_GRACE_MS = 2000;

    private final E2e d;
    private final int expect;
    private final long lingerMs;
    private final List<String> deliveries = Collections.synchronizedList(new ArrayList<>());
    private final List<Long> deliveredAt = Collections.synchronizedList(new ArrayList<>());
    private final Map<String, String> bodies = Collections.synchronizedMap(new LinkedHashMap<>());
    private final AtomicInteger maxAttempt = new AtomicInteger();

    OffsetReset(E2e driver) {
        this.d = driver;
        this.expect = Integer.parseInt(d.opt("expect", String.valueOf(d.count)));
        this.lingerMs = Long.parseLong(d.opt("linger-ms", "0"));
    }

    private FilterExpression filter() {
        return new FilterExpression(d.tag, FilterExpressionType.TAG);
    }

    /** Records a delivery that was acked (simple) or answered SUCCESS (push). */
    private void record(MessageView mv) {
        String id = mv.getMessageId().toString();
        synchronized (deliveries) {
            deliveries.add(id);
            deliveredAt.add(System.currentTimeMillis());
            bodies.putIfAbsent(id, E2e.body(mv));
            maxAttempt.accumulateAndGet(mv.getDeliveryAttempt(), Math::max);
            System.out.println("PROGRESS received=" + deliveries.size());
            System.out.flush();
        }
    }

    private Map<String, Object> report(Map<String, Object> r) {
        synchronized (deliveries) {
            r.put("received", deliveries.size());
            r.put("deliveries", new ArrayList<>(deliveries));
            r.put("delivered_at", new ArrayList<>(deliveredAt));
            r.put("bodies", new LinkedHashMap<>(bodies));
            r.put("max_delivery_attempt", maxAttempt.get());
            r.put("ok", deliveries.size() >= expect);
        }
        return r;
    }

    /** Runs until {@code expect} deliveries, then {@code linger-ms} more. */
    private void waitForGoal(java.util.function.BooleanSupplier step) throws InterruptedException {
        long lingerEnd = Long.MAX_VALUE;
        while (d.timeLeft()) {
            if (deliveries.size() >= expect) {
                lingerEnd = Math.min(lingerEnd, System.currentTimeMillis() + lingerMs);
                if (System.currentTimeMillis() >= lingerEnd) {
                    return;
                }
            }
            if (!step.getAsBoolean()) {
                Thread.sleep(100);
            }
        }
    }

    Map<String, Object> simpleConsume() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        SimpleConsumer consumer;
        try {
            consumer = d.provider.newSimpleConsumerBuilder()
                .setClientConfiguration(d.config())
                .setConsumerGroup(d.group)
                .setAwaitDuration(AWAIT)
                .setSubscriptionExpressions(Map.of(d.topic, filter()))
                .build();
        } catch (Exception e) {
            d.error("startup: " + E2e.describe(e));
            return report(r);
        }
        int[] ackFailed = {0};
        waitForGoal(() -> {
            List<MessageView> batch;
            try {
                batch = consumer.receive(16, INVISIBLE);
            } catch (Exception e) {
                if (!E2e.describe(e).contains("MESSAGE_NOT_FOUND") && !E2e.describe(e).contains("40401")) {
                    d.error("receive: " + E2e.describe(e));
                }
                return false;
            }
            for (MessageView mv : batch) {
                try {
                    consumer.ack(mv);
                    record(mv);
                } catch (Exception e) {
                    ackFailed[0]++;
                    d.error("ack " + mv.getMessageId() + ": " + E2e.describe(e));
                }
            }
            return true;
        });
        r.put("ack_failed", ackFailed[0]);
        r.put("shutdown_error", E2e.closeBounded(consumer, 15));
        report(r);
        r.put("ok", Boolean.TRUE.equals(r.get("ok")) && ackFailed[0] == 0);
        return r;
    }

    Map<String, Object> pushConsume() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        PushConsumer consumer;
        try {
            consumer = d.provider.newPushConsumerBuilder()
                .setClientConfiguration(d.config())
                .setConsumerGroup(d.group)
                .setSubscriptionExpressions(Map.of(d.topic, filter()))
                .setConsumptionThreadCount(4)
                .setMessageListener(mv -> {
                    record(mv);
                    return ConsumeResult.SUCCESS;
                })
                .build();
        } catch (Exception e) {
            d.error("startup: " + E2e.describe(e));
            return report(r);
        }
        waitForGoal(() -> false);
        Thread.sleep(ACK_GRACE_MS);
        r.put("shutdown_error", E2e.closeBounded(consumer, 40));
        return report(r);
    }
}

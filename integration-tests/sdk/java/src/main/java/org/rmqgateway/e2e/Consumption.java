package org.rmqgateway.e2e;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.rocketmq.client.apis.consumer.ConsumeResult;
import org.apache.rocketmq.client.apis.consumer.FilterExpression;
import org.apache.rocketmq.client.apis.consumer.FilterExpressionType;
import org.apache.rocketmq.client.apis.consumer.PushConsumer;
import org.apache.rocketmq.client.apis.message.Message;
import org.apache.rocketmq.client.apis.producer.Producer;

/**
 * The consumption modes of {@code sdk/MESSAGE_TYPES.md} § "Consumption (retries)" for
 * rocketmq-client-java: {@code retry-run} produces {@code --count} messages and consumes them with a
 * PushConsumer whose listener fails every delivery of the first {@code --poison} ones, recording
 * each delivery's attempt and time (epoch ms).
 */
final class Consumption {
    private final E2e d;

    Consumption(E2e driver) {
        this.d = driver;
    }

    private int intOpt(String name, int dflt) {
        return Integer.parseInt(d.opt(name, String.valueOf(dflt)));
    }

    Map<String, Object> retryRun() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        int poison = intOpt("poison", 0);
        int maxAttempts = intOpt("max-attempts", 1);
        long lingerMs = Long.parseLong(d.opt("linger-ms", "0"));
        Map<String, String> sent = new TreeMap<>();
        try (Producer producer = d.provider.newProducerBuilder().setClientConfiguration(d.config()).setTopics(d.topic).build()) {
            for (int i = 0; i < d.count; i++) {
                String body = d.prefix + "|" + (i < poison ? "poison" : "ok") + "|" + i;
                Message m = d.provider.newMessageBuilder()
                    .setTopic(d.topic)
                    .setTag(d.tag)
                    .setBody(body.getBytes(StandardCharsets.UTF_8))
                    .build();
                try {
                    sent.put(body, producer.send(m).getMessageId().toString());
                } catch (Exception e) {
                    d.error("send " + body + ": " + E2e.describe(e));
                }
            }
        }
        Map<String, List<long[]>> deliveries = new ConcurrentHashMap<>();
        Set<String> succeeded = ConcurrentHashMap.newKeySet();
        PushConsumer consumer = null;
        try {
            consumer = d.provider.newPushConsumerBuilder()
                .setClientConfiguration(d.config())
                .setConsumerGroup(d.group)
                .setSubscriptionExpressions(Map.of(d.topic, new FilterExpression("*", FilterExpressionType.TAG)))
                .setMessageListener(mv -> {
                    String body = E2e.body(mv);
                    deliveries.computeIfAbsent(body, b -> Collections.synchronizedList(new ArrayList<>()))
                        .add(new long[] {mv.getDeliveryAttempt(), System.currentTimeMillis()});
                    if (body.contains("|poison|")) {
                        return ConsumeResult.FAILURE;
                    }
                    succeeded.add(body);
                    return ConsumeResult.SUCCESS;
                })
                .build();
        } catch (Exception e) {
            d.error("consumer startup: " + E2e.describe(e));
        }
        while (consumer != null && !goal(sent, deliveries, succeeded, poison, maxAttempts) && d.timeLeft()) {
            Thread.sleep(50);
        }
        Thread.sleep(lingerMs);
        if (consumer != null) {
            r.put("shutdown_error", E2e.closeBounded(consumer, 40));
        }
        Map<String, Object> seen = new TreeMap<>();
        for (Map.Entry<String, List<long[]>> e : deliveries.entrySet()) {
            List<Object> list = new ArrayList<>();
            synchronized (e.getValue()) {
                for (long[] x : e.getValue()) {
                    list.add(List.of(x[0], x[1]));
                }
            }
            seen.put(e.getKey(), list);
        }
        boolean ok = consumer != null && sent.size() == d.count && goal(sent, deliveries, succeeded, poison, maxAttempts);
        r.put("ok", ok);
        r.put("sent", sent);
        r.put("deliveries", seen);
        r.put("succeeded", succeeded.size());
        return r;
    }

    /** Every ok message consumed with SUCCESS, every poison one delivered maxAttempts times. */
    private boolean goal(Map<String, String> sent, Map<String, List<long[]>> deliveries, Set<String> succeeded,
                         int poison, int maxAttempts) {
        if (succeeded.size() < d.count - poison) {
            return false;
        }
        for (String body : sent.keySet()) {
            List<long[]> got = deliveries.get(body);
            if (body.contains("|poison|") && (got == null || got.size() < maxAttempts)) {
                return false;
            }
        }
        return true;
    }
}

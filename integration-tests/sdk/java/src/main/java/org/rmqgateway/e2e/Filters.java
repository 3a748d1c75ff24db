package org.rmqgateway.e2e;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.apache.rocketmq.client.apis.consumer.FilterExpression;
import org.apache.rocketmq.client.apis.consumer.FilterExpressionType;
import org.apache.rocketmq.client.apis.consumer.SimpleConsumer;
import org.apache.rocketmq.client.apis.message.MessageBuilder;
import org.apache.rocketmq.client.apis.message.MessageView;
import org.apache.rocketmq.client.apis.producer.Producer;

/**
 * The SQL92 filter modes of {@code sdk/MESSAGE_TYPES.md}: {@code filter-produce} sends the
 * messages of a tab-separated file (tag, keys, user properties), {@code filter-consume} runs one
 * SimpleConsumer per line of a filters file, each subscribed with its SQL92 expression, and
 * reports the bodies each received or the error the SDK raised.
 */
final class Filters {
    /** Long-polling wait of the SimpleConsumers (short, so a linger ends close to its time). */
    private static final Duration AWAIT = Duration.ofSeconds(2);
    private static final Duration INVISIBLE = Duration.ofSeconds(30);

    private final E2e d;

    Filters(E2e driver) {
        this.d = driver;
    }

    /** The non-empty lines of a tab-separated file, split on tabs. */
    private static List<String[]> rows(String path) throws IOException {
        List<String[]> out = new ArrayList<>();
        for (String line : Files.readAllLines(Paths.get(path), StandardCharsets.UTF_8)) {
            if (!line.isEmpty()) {
                out.add(line.split("\t", -1));
            }
        }
        return out;
    }

    private String required(String name) {
        String v = d.opt(name, "");
        if (v.isEmpty()) {
            throw new IllegalArgumentException("--" + name + " is required");
        }
        return v;
    }

    /** One synchronous send per line {@code body TAB tag TAB keys TAB name=value ...}. */
    Map<String, Object> produce() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        List<String[]> rows = rows(required("messages"));
        List<String> ids = new ArrayList<>();
        Producer producer;
        try {
            producer = d.provider.newProducerBuilder().setClientConfiguration(d.config()).setTopics(d.topic).build();
        } catch (Exception e) {
            d.error("startup: " + E2e.describe(e));
            r.put("sent", 0);
            r.put("ids", ids);
            return r;
        }
        for (String[] row : rows) {
            MessageBuilder b = d.provider.newMessageBuilder()
                .setTopic(d.topic)
                .setBody(row[0].getBytes(StandardCharsets.UTF_8));
            if (row.length > 1 && !row[1].isEmpty()) {
                b.setTag(row[1]);
            }
            if (row.length > 2 && !row[2].isEmpty()) {
                b.setKeys(row[2].split(" "));
            }
            for (int i = 3; i < row.length; i++) {
                int eq = row[i].indexOf('=');
                b.addProperty(row[i].substring(0, eq), row[i].substring(eq + 1));
            }
            try {
                ids.add(producer.send(b.build()).getMessageId().toString());
            } catch (Exception e) {
                d.error("send " + row[0] + ": " + E2e.describe(e));
            }
        }
        r.put("sent", ids.size());
        r.put("ids", ids);
        r.put("shutdown_error", E2e.closeBounded(producer, 15));
        r.put("ok", ids.size() == rows.size());
        return r;
    }

    /**
     * One SimpleConsumer per line {@code name TAB group TAB start|late TAB expect TAB
     * expression}, {@code --parallel} at a time (default 8).
     */
    Map<String, Object> consume() throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        List<String[]> rows = rows(required("filters"));
        long lingerMs = Long.parseLong(d.opt("linger-ms", "2000"));
        ExecutorService pool = Executors.newFixedThreadPool(Integer.parseInt(d.opt("parallel", "8")));
        List<Future<Map<String, Object>>> running = new ArrayList<>();
        for (String[] row : rows) {
            String group = row[1];
            boolean late = row[2].equals("late");
            int expect = Integer.parseInt(row[3]);
            String expression = row[4];
            running.add(pool.submit(() -> one(group, late, expect, expression, lingerMs)));
        }
        Map<String, Object> filters = new LinkedHashMap<>();
        boolean ok = true;
        for (int i = 0; i < rows.size(); i++) {
            Map<String, Object> f = running.get(i).get();
            ok &= Boolean.TRUE.equals(f.get("ok"));
            filters.put(rows.get(i)[0], f);
        }
        pool.shutdownNow();
        r.put("filters", filters);
        r.put("ok", ok);
        return r;
    }

    /**
     * A SimpleConsumer of {@code group} subscribed with {@code expression} (SQL92) when built, or
     * ({@code late}) built with TAG {@code *} and then subscribed to it, so the expression first
     * reaches the server in ReceiveMessage rather than in the Settings. It receives until
     * {@code expect} distinct messages came and {@code lingerMs} more passed; with {@code expect}
     * below 0 (a refused expression) it makes a single receive.
     */
    private Map<String, Object> one(String group, boolean late, int expect, String expression, long lingerMs) {
        Map<String, Object> r = new LinkedHashMap<>();
        List<String> bodies = new ArrayList<>();
        Set<String> seen = new HashSet<>();
        int duplicates = 0;
        int receiveErrors = 0;
        String startupError = null;
        String receiveError = null;
        FilterExpression sql = new FilterExpression(expression, FilterExpressionType.SQL92);
        SimpleConsumer consumer = null;
        try {
            FilterExpression first = late ? new FilterExpression("*", FilterExpressionType.TAG) : sql;
            consumer = d.provider.newSimpleConsumerBuilder()
                .setClientConfiguration(d.config())
                .setConsumerGroup(group)
                .setAwaitDuration(AWAIT)
                // Mutable: the SDK's subscribe() puts into this very map.
                .setSubscriptionExpressions(new ConcurrentHashMap<>(Map.of(d.topic, first)))
                .build();
            if (late) {
                consumer.subscribe(d.topic, sql);
            }
        } catch (Exception e) {
            startupError = E2e.describe(e);
        }
        long lingerEnd = Long.MAX_VALUE;
        while (consumer != null && d.timeLeft()) {
            if (expect >= 0 && seen.size() >= expect) {
                lingerEnd = Math.min(lingerEnd, System.currentTimeMillis() + lingerMs);
                if (System.currentTimeMillis() >= lingerEnd) {
                    break;
                }
            }
            List<MessageView> batch;
            try {
                batch = consumer.receive(32, INVISIBLE);
            } catch (Exception e) {
                receiveErrors++;
                if (receiveError == null) {
                    receiveError = E2e.describe(e);
                }
                if (expect < 0) {
                    break;
                }
                try {
                    Thread.sleep(300);
                } catch (InterruptedException ie) {
                    break;
                }
                continue;
            }
            for (MessageView mv : batch) {
                if (seen.add(mv.getMessageId().toString())) {
                    bodies.add(E2e.body(mv));
                } else {
                    duplicates++;
                }
                try {
                    consumer.ack(mv);
                } catch (Exception e) {
                    d.error("ack " + group + " " + mv.getMessageId() + ": " + E2e.describe(e));
                }
            }
            if (expect < 0) {
                break;
            }
        }
        r.put("bodies", bodies);
        r.put("duplicates", duplicates);
        r.put("startup_error", startupError);
        r.put("receive_error", receiveError);
        r.put("receive_errors", receiveErrors);
        if (consumer != null) {
            r.put("shutdown_error", E2e.closeBounded(consumer, 15));
        }
        r.put("ok", expect >= 0 ? startupError == null && seen.size() >= expect
            : startupError != null || receiveError != null);
        return r;
    }
}

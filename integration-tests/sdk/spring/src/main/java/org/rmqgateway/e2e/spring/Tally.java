package org.rmqgateway.e2e.spring;

import java.util.ArrayList;
import java.util.Collection;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;

import org.springframework.beans.factory.annotation.Value;
import org.springframework.stereotype.Component;

/**
 * What the listener has seen, checked against the expected bodies "prefix-0".."prefix-(count-1)"
 * (the same bookkeeping as sdk/python/tally.py): distinct messages by body index and message id,
 * duplicates, unexpected bodies; and each delivery's tag, keys ("prefix-key-i") and, when the
 * Spring sender sent it, the user property e2e-index.
 */
@Component
public class Tally {
    private final String prefix;
    private final int count;
    private final String tag;
    private final boolean expectIndexProperty;

    private final TreeMap<Integer, String> received = new TreeMap<>();
    private final Set<String> seenIds = new HashSet<>();
    private final List<String> duplicates = new ArrayList<>();
    private final List<String> unexpected = new ArrayList<>();
    private final List<String> errors = new ArrayList<>();
    /** deliveries whose tag, keys or user property differ from what was sent (one line each) */
    private final List<String> mismatches = new ArrayList<>();
    private int calls;
    private int maxDeliveryAttempt;

    public Tally(@Value("${e2e.prefix:m}") String prefix, @Value("${e2e.count:50}") int count,
                 @Value("${RMQ_TAG:*}") String tag, @Value("${e2e.mode:produce-and-consume}") String mode) {
        this.prefix = prefix;
        this.count = count;
        this.tag = tag;
        this.expectIndexProperty = SpringE2eApplication.sends(mode);
    }

    public synchronized void record(String messageId, String body, String msgTag, Collection<String> keys,
                                    String indexProperty, int deliveryAttempt) {
        calls++;
        maxDeliveryAttempt = Math.max(maxDeliveryAttempt, deliveryAttempt);
        Integer index = null;
        if (body.startsWith(prefix + "-")) {
            String tail = body.substring(prefix.length() + 1);
            if (!tail.isEmpty() && tail.chars().allMatch(Character::isDigit) && tail.length() < 10
                    && Integer.parseInt(tail) < count) {
                index = Integer.parseInt(tail);
            }
        }
        if (index == null) {
            unexpected.add(body.length() > 80 ? body.substring(0, 80) : body);
            notifyAll();
            return;
        }
        checkProperties(messageId, index, msgTag, keys, indexProperty);
        if (seenIds.contains(messageId) || received.containsKey(index)) {
            duplicates.add(messageId);
        } else {
            seenIds.add(messageId);
            received.put(index, messageId);
        }
        notifyAll();
    }

    private void checkProperties(String messageId, int index, String msgTag, Collection<String> keys,
                                 String indexProperty) {
        List<String> wrong = new ArrayList<>();
        if (!"*".equals(tag) && !tag.equals(msgTag)) {
            wrong.add("tag " + msgTag + " (want " + tag + ")");
        }
        String key = prefix + "-key-" + index;
        if (keys == null || !keys.contains(key)) {
            wrong.add("keys " + keys + " (want " + key + ")");
        }
        if (expectIndexProperty && !String.valueOf(index).equals(indexProperty)) {
            wrong.add("property " + E2eSender.INDEX_PROPERTY + "=" + indexProperty + " (want " + index + ")");
        }
        if (!wrong.isEmpty()) {
            mismatches.add("message " + messageId + " (" + prefix + "-" + index + "): " + String.join(", ", wrong));
        }
    }

    public synchronized boolean complete() {
        return received.size() == count;
    }

    /** Waits until all messages arrived or the deadline (System.nanoTime) passed. */
    public synchronized boolean awaitComplete(long deadlineNanos) throws InterruptedException {
        while (!complete()) {
            long left = deadlineNanos - System.nanoTime();
            if (left <= 0) {
                return false;
            }
            wait(Math.max(1, left / 1_000_000));
        }
        return true;
    }

    public synchronized int mismatched() {
        return mismatches.size();
    }

    public synchronized Map<String, Object> report() {
        Map<String, Object> r = new LinkedHashMap<>();
        List<Integer> missing = new ArrayList<>();
        for (int i = 0; i < count; i++) {
            if (!received.containsKey(i)) {
                missing.add(i);
            }
        }
        r.put("received", received.size());
        r.put("ids", new ArrayList<>(received.values()));
        r.put("duplicates", new ArrayList<>(duplicates));
        r.put("unexpected", new ArrayList<>(unexpected));
        r.put("missing", missing);
        r.put("consume_calls", calls);
        r.put("max_delivery_attempt", maxDeliveryAttempt);
        r.put("property_mismatches", new ArrayList<>(mismatches));
        r.put("listener_errors", new ArrayList<>(errors));
        return r;
    }
}

package org.rmqgateway.e2e.spring;

import org.apache.rocketmq.client.apis.producer.SendReceipt;
import org.apache.rocketmq.client.core.RocketMQClientTemplate;
import org.apache.rocketmq.client.support.RocketMQHeaders;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.messaging.Message;
import org.springframework.messaging.support.MessageBuilder;
import org.springframework.stereotype.Component;

/** Sends through the starter's {@link RocketMQClientTemplate} (producer from rocketmq.producer.*). */
@Component
public class E2eSender {
    /** a user property the listener checks, so properties are seen to survive the round trip */
    public static final String INDEX_PROPERTY = "e2e-index";

    private final RocketMQClientTemplate template;
    private final String topic;
    private final String tag;

    public E2eSender(RocketMQClientTemplate template,
                     @Value("${rocketmq.producer.topic}") String topic,
                     @Value("${RMQ_TAG:e2e}") String tag) {
        this.template = template;
        this.topic = topic;
        this.tag = tag;
    }

    /** Sends one message with a tag and a key; returns the message id the gateway assigned. */
    public String send(String body, String key, int index) {
        // The key header is "rocketmq_KEYS": starter 2.3.1 also copies every header into a user
        // property, and "KEYS" is a reserved property key (the send is refused with 40007
        // ILLEGAL_MESSAGE_PROPERTY_KEY; starter 2.3.2+ no longer copies it).
        Message<String> message = MessageBuilder.withPayload(body)
                .setHeader(RocketMQHeaders.PREFIX + RocketMQHeaders.KEYS, key)
                .setHeader(INDEX_PROPERTY, index)
                .build();
        // destination "topic:tag" sets the tag
        SendReceipt receipt = template.syncSendNormalMessage(topic + ":" + tag, message);
        if (receipt == null) {
            // starter 2.3.1 logs a failed send ("Failed to send message") and returns null
            throw new IllegalStateException("syncSendNormalMessage returned no receipt (send failed; see the app log)");
        }
        return receipt.getMessageId().toString();
    }
}

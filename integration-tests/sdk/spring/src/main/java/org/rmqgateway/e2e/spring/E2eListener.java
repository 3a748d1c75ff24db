package org.rmqgateway.e2e.spring;

import java.nio.charset.StandardCharsets;

import org.apache.rocketmq.client.annotation.RocketMQMessageListener;
import org.apache.rocketmq.client.apis.consumer.ConsumeResult;
import org.apache.rocketmq.client.apis.message.MessageView;
import org.apache.rocketmq.client.core.RocketMQListener;
import org.springframework.stereotype.Service;

/**
 * The push consumer: endpoints, topic and tag come from rocketmq.push-consumer.* (the
 * annotation's defaults), the group from the placeholder below.
 */
@Service
@RocketMQMessageListener(consumerGroup = "${rocketmq.push-consumer.consumer-group}")
public class E2eListener implements RocketMQListener {
    private final Tally tally;

    public E2eListener(Tally tally) {
        this.tally = tally;
    }

    @Override
    public ConsumeResult consume(MessageView message) {
        String body = StandardCharsets.UTF_8.decode(message.getBody().duplicate()).toString();
        tally.record(message.getMessageId().toString(), body, message.getTag().orElse(null),
                message.getKeys(), message.getProperties().get(E2eSender.INDEX_PROPERTY),
                message.getDeliveryAttempt());
        return ConsumeResult.SUCCESS;
    }
}

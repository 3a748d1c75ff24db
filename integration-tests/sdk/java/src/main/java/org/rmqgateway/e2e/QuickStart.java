package org.rmqgateway.e2e;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Map;
import org.apache.rocketmq.client.apis.ClientConfiguration;
import org.apache.rocketmq.client.apis.ClientServiceProvider;
import org.apache.rocketmq.client.apis.consumer.FilterExpression;
import org.apache.rocketmq.client.apis.consumer.SimpleConsumer;
import org.apache.rocketmq.client.apis.message.MessageView;
import org.apache.rocketmq.client.apis.producer.Producer;
import org.apache.rocketmq.client.apis.producer.SendReceipt;

/** The README's Java quick start: a gateway on 127.0.0.1:8081 (plaintext), topic auto-created. */
public class QuickStart {
    public static void main(String[] args) throws Exception {
        ClientServiceProvider provider = ClientServiceProvider.loadService();
        ClientConfiguration config = ClientConfiguration.newBuilder()
            .setEndpoints("127.0.0.1:8081")
            .enableSsl(false) // the Java client uses TLS by default; the gateway serves both
            .build();

        try (Producer producer = provider.newProducerBuilder()
                .setClientConfiguration(config).setTopics("demo").build()) {
            SendReceipt receipt = producer.send(provider.newMessageBuilder()
                .setTopic("demo").setTag("greeting").setKeys("key-1")
                .setBody("hello, gateway".getBytes(StandardCharsets.UTF_8)).build());
            System.out.println("sent " + receipt.getMessageId());
        }

        try (SimpleConsumer consumer = provider.newSimpleConsumerBuilder()
                .setClientConfiguration(config).setConsumerGroup("demo-group")
                .setSubscriptionExpressions(Map.of("demo", new FilterExpression("greeting")))
                .setAwaitDuration(Duration.ofSeconds(10)).build()) {
            for (MessageView m : consumer.receive(16, Duration.ofSeconds(30))) {
                System.out.println("received " + m.getMessageId() + ": "
                    + StandardCharsets.UTF_8.decode(m.getBody()));
                consumer.ack(m);
            }
        }
    }
}

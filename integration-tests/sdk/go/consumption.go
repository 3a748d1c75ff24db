// The consumption modes of integration-tests/sdk/MESSAGE_TYPES.md § "Consumption (retries)":
// retry-run produces --count messages and consumes them with a PushConsumer whose listener
// fails every delivery of the first --poison ones, recording each delivery's attempt and time.
package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"sync"
	"time"

	rmq "github.com/apache/rocketmq-clients/golang/v5"
)

type consumeArgs struct {
	poison      int // retry-run: messages (of --count) whose every delivery fails
	maxAttempts int // retry-run: deliveries to wait for per poison message
}

func (c *consumeArgs) register(fs *flag.FlagSet) {
	fs.IntVar(&c.poison, "poison", 0, "retry-run: messages (of --count) whose every delivery fails")
	fs.IntVar(&c.maxAttempts, "max-attempts", 1, "retry-run: deliveries to wait for per poison message")
}

// retryRun: bodies are "<prefix>|poison|<i>" (i < --poison) and "<prefix>|ok|<i>". The goal:
// every ok message consumed with SUCCESS and every poison one delivered --max-attempts times;
// then it keeps consuming --linger-ms (a delivery beyond the limit would show) and stops.
func retryRun(a args) (bool, map[string]any) {
	r := map[string]any{}
	errs := []string{}
	sent := map[string]string{} // body -> message id
	p, err := rmq.NewProducer(a.config(""), rmq.WithTopics(a.topic))
	if err == nil {
		err = p.Start()
	}
	if err != nil {
		r["errors"] = []string{"producer startup: " + err.Error()}
		return false, r
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	for i := 0; i < a.count; i++ {
		kind := "ok"
		if i < a.poison {
			kind = "poison"
		}
		body := fmt.Sprintf("%s|%s|%d", a.prefix, kind, i)
		m := &rmq.Message{Topic: a.topic, Body: []byte(body)}
		m.SetTag(a.tag)
		receipts, err := p.Send(ctx, m)
		if err != nil || len(receipts) != 1 {
			errs = append(errs, fmt.Sprintf("send %s: %v", body, err))
			continue
		}
		sent[body] = receipts[0].MessageID
	}
	_ = stopBounded(p.GracefulStop, 10*time.Second)

	var mu sync.Mutex
	deliveries := map[string][][2]int64{} // body -> [attempt, received at ms]
	succeeded := map[string]bool{}
	listener := &rmq.FuncMessageListener{Consume: func(mv *rmq.MessageView) rmq.ConsumerResult {
		body := string(mv.GetBody())
		mu.Lock()
		defer mu.Unlock()
		deliveries[body] = append(deliveries[body], [2]int64{int64(mv.GetDeliveryAttempt()), time.Now().UnixMilli()})
		if strings.Contains(body, "|poison|") {
			return rmq.FAILURE
		}
		succeeded[body] = true
		return rmq.SUCCESS
	}}
	goal := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return goal0(a, sent, deliveries, succeeded)
	}
	c, err := rmq.NewPushConsumer(a.config(a.group),
		rmq.WithPushSubscriptionExpressions(map[string]*rmq.FilterExpression{a.topic: rmq.SUB_ALL}),
		rmq.WithPushMessageListener(listener))
	if err == nil {
		err = c.Start()
	}
	if err != nil {
		errs = append(errs, "consumer startup: "+err.Error())
	} else {
		deadline := time.Now().Add(a.timeout)
		for !goal() && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(time.Duration(a.lingerMs) * time.Millisecond)
		r["shutdown_error"] = stopBounded(c.GracefulStop, 40*time.Second)
	}
	mu.Lock()
	defer mu.Unlock()
	r["sent"], r["deliveries"], r["succeeded"], r["errors"] = sent, deliveries, len(succeeded), cap20(errs)
	return len(errs) == 0 && len(sent) == a.count && goal0(a, sent, deliveries, succeeded), r
}

// goal0 is retryRun's goal on data the caller has locked.
func goal0(a args, sent map[string]string, deliveries map[string][][2]int64, succeeded map[string]bool) bool {
	if len(succeeded) < a.count-a.poison {
		return false
	}
	for body := range sent {
		if strings.Contains(body, "|poison|") && len(deliveries[body]) < a.maxAttempts {
			return false
		}
	}
	return true
}

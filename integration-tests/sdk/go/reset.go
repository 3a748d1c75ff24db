package main

// The modes reset-simple-consume and reset-push-consume of
// integration-tests/sdk/MESSAGE_TYPES.md: one consumer that keeps running while the test
// resets its group's offset, recording every delivery (redeliveries included) in order. They
// use the --expect and --linger-ms options of the message-type modes.

import (
	"context"
	"fmt"
	"sync"
	"time"

	rmq "github.com/apache/rocketmq-clients/golang/v5"
)

// deliveryLog records acked (simple) or successfully consumed (push) deliveries in order.
type deliveryLog struct {
	mu          sync.Mutex
	ids         []string
	at          []int64
	bodies      map[string]string
	maxAttempt  int32
	errs        []string
	ackFailures int
}

func (l *deliveryLog) record(m *rmq.MessageView) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ids = append(l.ids, m.GetMessageId())
	l.at = append(l.at, epochMs(time.Now()))
	if _, seen := l.bodies[m.GetMessageId()]; !seen {
		l.bodies[m.GetMessageId()] = string(m.GetBody())
	}
	l.maxAttempt = max(l.maxAttempt, m.GetDeliveryAttempt())
	fmt.Printf("PROGRESS received=%d\n", len(l.ids))
}

func (l *deliveryLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.ids)
}

func (l *deliveryLog) fail(e string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, e)
}

// untilGoal runs step (or sleeps) until expect deliveries were recorded and linger-ms passed,
// or the timeout.
func (l *deliveryLog) untilGoal(a args, step func() bool) {
	deadline := time.Now().Add(a.timeout)
	var lingerEnd time.Time
	for time.Now().Before(deadline) {
		if l.count() >= a.expect {
			if lingerEnd.IsZero() {
				lingerEnd = time.Now().Add(time.Duration(a.lingerMs) * time.Millisecond)
			}
			if !time.Now().Before(lingerEnd) {
				return
			}
		}
		if step == nil || !step() {
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func (l *deliveryLog) report(a args, r map[string]any) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	ids := l.ids
	if ids == nil {
		ids = []string{}
	}
	r["received"], r["deliveries"], r["delivered_at"], r["bodies"] = len(ids), ids, l.at, l.bodies
	r["max_delivery_attempt"], r["ack_failed"], r["errors"] = l.maxAttempt, l.ackFailures, cap20(l.errs)
	return len(ids) >= a.expect && l.ackFailures == 0
}

func resetSimpleConsume(a args) (bool, map[string]any) {
	r := map[string]any{}
	l := &deliveryLog{bodies: map[string]string{}}
	c, err := rmq.NewSimpleConsumer(a.config(a.group),
		rmq.WithSimpleSubscriptionExpressions(map[string]*rmq.FilterExpression{a.topic: rmq.NewFilterExpression(a.tag)}),
		rmq.WithSimpleAwaitDuration(5*time.Second))
	if err == nil {
		err = c.Start()
	}
	if err != nil {
		l.fail("startup: " + err.Error())
		l.report(a, r)
		return false, r
	}
	l.untilGoal(a, func() bool {
		msgs, err := c.Receive(context.Background(), batch, invisible)
		if err != nil {
			if !isNotFound(err) {
				l.fail("receive: " + err.Error())
			}
			return false
		}
		for _, m := range msgs {
			if err := c.Ack(context.Background(), m); err != nil {
				l.mu.Lock()
				l.ackFailures++
				l.mu.Unlock()
				l.fail(fmt.Sprintf("ack %s: %v", m.GetMessageId(), err))
				continue
			}
			l.record(m)
		}
		return true
	})
	r["shutdown_error"] = stopBounded(c.GracefulStop, 15*time.Second)
	ok := l.report(a, r)
	return ok, r
}

func resetPushConsume(a args) (bool, map[string]any) {
	r := map[string]any{}
	l := &deliveryLog{bodies: map[string]string{}}
	listener := &rmq.FuncMessageListener{Consume: func(m *rmq.MessageView) rmq.ConsumerResult {
		l.record(m)
		return rmq.SUCCESS
	}}
	c, err := rmq.NewPushConsumer(a.config(a.group),
		rmq.WithPushSubscriptionExpressions(map[string]*rmq.FilterExpression{a.topic: rmq.NewFilterExpression(a.tag)}),
		rmq.WithPushMessageListener(listener))
	if err == nil {
		err = c.Start()
	}
	if err != nil {
		l.fail("startup: " + err.Error())
		l.report(a, r)
		return false, r
	}
	l.untilGoal(a, nil)
	time.Sleep(2 * time.Second) // the SDK acks after the listener returns: let the last acks go out
	r["shutdown_error"] = stopBounded(c.GracefulStop, 40*time.Second)
	ok := l.report(a, r)
	return ok, r
}

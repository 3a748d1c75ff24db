package main

// The modes of integration-tests/sdk/MESSAGE_TYPES.md: FIFO, delay/timer, recall and
// transactional messages, with the arguments and RESULT fields every SDK's driver shares.
//
// What the Go SDK (5.1.4) does that these modes rely on:
//   - the PushConsumer takes the group's fifo flag from the server's settings and then consumes
//     the messages of a received batch one after the other, retrying a failed one locally
//     after the retry policy's backoff (its delivery attempt is raised by the SDK) and
//     forwarding it to the DLQ after the last attempt (consumer_service.go fifoConsumeService,
//     process_queue.go eraseFifoMessage);
//   - Message.SetDelayTimestamp sets the delivery timestamp; SendReceipt.RecallHandle and
//     Producer.Recall exist;
//   - a TransactionChecker answers the server's checks and the SDK sends the EndTransaction
//     itself, only logging a failure (the observer sees the answers).

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	rmq "github.com/apache/rocketmq-clients/golang/v5"
)

// typeArgs are the options of these modes, with the contract's names and defaults.
type typeArgs struct {
	groups      int     // fifo-produce: message groups
	consumers   int     // fifo-consume: PushConsumer instances in this process
	poisonGroup string  // fifo-consume: the message group whose every delivery fails
	holdMs      int     // fifo-consume: listener sleep; tx-produce: wait before ending
	expect      int     // fifo-consume, timed-consume, tx-check: the goal (default --count)
	delays      []int64 // delay-produce: delivery delays in ms
	lingerMs    int     // timed-consume: keep receiving this long after the goal
	delayMs     int     // recall: delivery delay of both messages
	resolution  string  // tx-produce: commit, rollback or orphan
}

func (t *typeArgs) register(fs *flag.FlagSet) {
	fs.IntVar(&t.groups, "groups", 4, "fifo-produce: message groups")
	fs.IntVar(&t.consumers, "consumers", 2, "fifo-consume: PushConsumer instances")
	fs.StringVar(&t.poisonGroup, "poison-group", "", "fifo-consume: message group whose every delivery fails")
	fs.IntVar(&t.holdMs, "hold-ms", 0, "fifo-consume: listener sleep; tx-produce: wait before ending")
	fs.IntVar(&t.expect, "expect", -1, "fifo-consume, timed-consume, tx-check: goal (-1: --count)")
	fs.Func("delays-ms", "delay-produce: delays in ms, comma separated", func(v string) error {
		t.delays = nil // the last occurrence wins
		for _, f := range strings.Split(v, ",") {
			d, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64)
			if err != nil {
				return fmt.Errorf("--delays-ms: %w", err)
			}
			t.delays = append(t.delays, d)
		}
		return nil
	})
	fs.IntVar(&t.lingerMs, "linger-ms", 0, "timed-consume: keep receiving this long after the goal")
	fs.IntVar(&t.delayMs, "delay-ms", 5000, "recall: delivery delay in ms")
	fs.StringVar(&t.resolution, "resolution", "", "tx-produce: commit|rollback|orphan")
}

// check resolves the defaults that depend on --count and rejects what a mode cannot run with.
func (t *typeArgs) check(mode string, count int) error {
	if t.expect < 0 {
		t.expect = count
	}
	switch {
	case mode == "fifo-produce" && t.groups < 1:
		return errors.New("--groups must be at least 1")
	case mode == "fifo-consume" && t.consumers < 1:
		return errors.New("--consumers must be at least 1")
	case mode == "delay-produce" && len(t.delays) == 0:
		return errors.New("--delays-ms is required")
	case mode == "tx-produce" && t.resolution != "commit" && t.resolution != "rollback" && t.resolution != "orphan":
		return fmt.Errorf("--resolution must be commit, rollback or orphan, not %q", t.resolution)
	}
	return nil
}

func epochMs(t time.Time) int64 { return t.UnixMilli() }

// startProducer starts a producer of --topic.
func startProducer(a args, opts ...rmq.ProducerOption) (rmq.Producer, error) {
	p, err := rmq.NewProducer(a.config(""), append([]rmq.ProducerOption{rmq.WithTopics(a.topic)}, opts...)...)
	if err == nil {
		err = p.Start()
	}
	return p, err
}

// sendOne sends m synchronously and returns its single receipt.
func sendOne(ctx context.Context, p rmq.Producer, m *rmq.Message) (*rmq.SendReceipt, error) {
	receipts, err := p.Send(ctx, m)
	if err != nil {
		return nil, err
	}
	if len(receipts) != 1 || receipts[0].MessageID == "" {
		return nil, fmt.Errorf("%d receipts", len(receipts))
	}
	return receipts[0], nil
}

// message builds a message of --topic with --tag and one key.
func (a args) message(body, key string) *rmq.Message {
	m := &rmq.Message{Topic: a.topic, Body: []byte(body)}
	m.SetTag(a.tag)
	m.SetKeys(key)
	return m
}

// fifoProduce sends message i in group "<prefix>-g<i % G>" with per-group sequence i / G, one
// synchronous send after the other, so each group's messages are stored in sequence order.
func fifoProduce(a args) (bool, map[string]any) {
	ids, errs := []string{}, []string{}
	result := func() map[string]any { return map[string]any{"sent": len(ids), "ids": ids, "errors": cap20(errs)} }
	p, err := startProducer(a)
	if err != nil {
		errs = append(errs, "startup: "+err.Error())
		return false, result()
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	for i := 0; i < a.count; i++ {
		group, seq := fmt.Sprintf("%s-g%d", a.prefix, i%a.groups), i/a.groups
		m := a.message(fmt.Sprintf("%s|%s|%d", a.prefix, group, seq), fmt.Sprintf("%s-key-%d", a.prefix, i))
		m.SetMessageGroup(group)
		receipt, err := sendOne(ctx, p, m)
		if err != nil {
			errs = append(errs, fmt.Sprintf("send #%d (%s seq %d): %v", i, group, seq, err))
			continue
		}
		ids = append(ids, receipt.MessageID)
	}
	r := result()
	r["shutdown_error"] = stopBounded(p.GracefulStop, 15*time.Second)
	return len(ids) == a.count, r
}

// fifoCall is one listener call of fifo-consume.
type fifoCall struct {
	group      string
	seq        int
	start, end time.Time
	success    bool
}

// fifoLog records what the fifo-consume listeners (of every consumer) were called with.
type fifoLog struct {
	a                            args
	started                      time.Time
	mu                           sync.Mutex
	calls                        []fifoCall
	seen                         map[string]bool // "group|seq" that had a listener call
	succeeded                    map[string]int  // non-poison "group|seq" -> SUCCESS answers
	successIDs                   []string        // message ids of the first SUCCESS of each non-poison "group|seq"
	received                     int             // listener calls, unexpected messages included
	unexpected                   []string        // bodies that are not "<prefix>|<group>|<seq>" (answered SUCCESS)
	poisonCalls, failedOnPurpose int
	maxAttempt                   int32
	errors                       []string
}

// parseFifoBody splits "<prefix>|<group>|<seq>".
func parseFifoBody(prefix string, body []byte) (string, int, bool) {
	parts := strings.Split(string(body), "|")
	if len(parts) != 3 || parts[0] != prefix {
		return "", 0, false
	}
	seq, err := strconv.Atoi(parts[2])
	return parts[1], seq, err == nil && seq >= 0
}

// consume is the listener: it fails every call of the poison group and the first call of
// every message with (seq + 1) % K == 0, sleeps --hold-ms, and records the call.
func (l *fifoLog) consume(m *rmq.MessageView) rmq.ConsumerResult {
	start := time.Now()
	group, seq, ok := parseFifoBody(l.a.prefix, m.GetBody())
	key := fmt.Sprintf("%s|%d", group, seq)
	l.mu.Lock()
	l.received++
	l.maxAttempt = max(l.maxAttempt, m.GetDeliveryAttempt())
	if !ok {
		l.unexpected = append(l.unexpected, string(m.GetBody()))
		l.mu.Unlock()
		return rmq.SUCCESS
	}
	if g := m.GetMessageGroup(); g == nil || *g != group {
		l.errors = append(l.errors, fmt.Sprintf("%s: message group %v, body says %q", m.GetMessageId(), g, group))
	}
	fail := false
	switch {
	case group == l.a.poisonGroup:
		fail = true
		l.poisonCalls++
	case l.a.failEvery > 0 && (seq+1)%l.a.failEvery == 0 && !l.seen[key]:
		fail = true
		l.failedOnPurpose++
	}
	l.seen[key] = true
	l.mu.Unlock()

	if l.a.holdMs > 0 {
		time.Sleep(time.Duration(l.a.holdMs) * time.Millisecond)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, fifoCall{group: group, seq: seq, start: start, end: time.Now(), success: !fail})
	if fail {
		return rmq.FAILURE
	}
	l.succeeded[key]++
	if l.succeeded[key] == 1 {
		l.successIDs = append(l.successIDs, m.GetMessageId())
		l.a.noteProgress(len(l.succeeded))
	}
	return rmq.SUCCESS
}

// goalMet: --expect distinct non-poison (group, seq) were consumed with SUCCESS.
func (l *fifoLog) goalMet() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.succeeded) >= l.a.expect
}

// report computes the contract's figures from the recorded calls.
func (l *fifoLog) report(r map[string]any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	byGroup := map[string][]fifoCall{}
	for _, c := range l.calls {
		byGroup[c.group] = append(byGroup[c.group], c)
	}
	reorderings, overlaps, doneMs := 0, 0, map[string]int64{}
	for group, calls := range byGroup {
		overlaps += countOverlaps(calls)
		if group == l.a.poisonGroup {
			continue
		}
		successes := []fifoCall{}
		for _, c := range calls {
			if c.success {
				successes = append(successes, c)
			}
		}
		sort.SliceStable(successes, func(i, j int) bool { return successes[i].end.Before(successes[j].end) })
		next := 0 // the seq the group's next SUCCESS must have
		for _, c := range successes {
			if c.seq != next {
				reorderings++
			}
			next = c.seq + 1
		}
		if n := len(successes); n > 0 {
			doneMs[group] = successes[n-1].end.Sub(l.started).Milliseconds()
		}
	}
	duplicates := []string{}
	for key, n := range l.succeeded {
		if n > 1 {
			duplicates = append(duplicates, key)
		}
	}
	sort.Strings(duplicates)
	r["succeeded"], r["reorderings"], r["overlaps"], r["duplicates"] = len(l.succeeded), reorderings, overlaps, duplicates
	r["group_done_ms"], r["poison_calls"], r["failed_on_purpose"] = doneMs, l.poisonCalls, l.failedOnPurpose
	r["max_delivery_attempt"], r["received"], r["unexpected"] = l.maxAttempt, l.received, cap20(l.unexpected)
}

// countOverlaps: pairs of calls whose [start, end] intervals intersect.
func countOverlaps(calls []fifoCall) int {
	sorted := append([]fifoCall{}, calls...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].start.Before(sorted[j].start) })
	n := 0
	for i := range sorted {
		for j := i + 1; j < len(sorted) && sorted[j].start.Before(sorted[i].end); j++ {
			n++
		}
	}
	return n
}

// fifoConsume runs --consumers PushConsumers of the orderly group until --expect distinct
// messages were consumed with SUCCESS, then waits (at most 5 s) for their acks to be answered
// OK: a message acked in vain would come again to the next consumer of the group.
func fifoConsume(a args) (bool, map[string]any) {
	l := &fifoLog{a: a, started: time.Now(), seen: map[string]bool{}, succeeded: map[string]int{}}
	listener := &rmq.FuncMessageListener{Consume: l.consume}
	errs := []string{}
	consumers := []rmq.PushConsumer{}
	for i := 0; i < a.consumers; i++ {
		c, err := rmq.NewPushConsumer(a.config(a.group),
			rmq.WithPushSubscriptionExpressions(map[string]*rmq.FilterExpression{a.topic: rmq.SUB_ALL}),
			rmq.WithPushMessageListener(listener))
		if err == nil {
			err = c.Start()
		}
		if err != nil {
			errs = append(errs, fmt.Sprintf("startup of consumer %d: %v", i, err))
			break
		}
		consumers = append(consumers, c)
	}
	deadline := time.Now().Add(a.timeout)
	for len(errs) == 0 && !l.goalMet() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	goal := l.goalMet()
	l.mu.Lock()
	successIDs := append([]string{}, l.successIDs...)
	l.mu.Unlock()
	for ackBy := time.Now().Add(5 * time.Second); goal && !obs.allAcked(successIDs) && time.Now().Before(ackBy); {
		time.Sleep(50 * time.Millisecond)
	}
	for _, id := range successIDs {
		if !obs.acked(id) {
			errs = append(errs, "no OK answer to the ack of "+id)
		}
	}
	// The SDK's GracefulStop waits for the in-flight long polls: stop them all at once.
	shutdown := make([]any, len(consumers))
	var wg sync.WaitGroup
	for i, c := range consumers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			shutdown[i] = stopBounded(c.GracefulStop, 40*time.Second)
		}()
	}
	wg.Wait()
	r := map[string]any{"shutdown_errors": shutdown}
	l.report(r)
	l.mu.Lock()
	errs = append(errs, l.errors...)
	l.mu.Unlock()
	r["errors"] = cap20(errs)
	return goal && len(errs) == 0, r
}

// delayProduce sends, for each delay d and j = 0..count-1, a message due at now + d. A send
// the server refuses (e.g. a delay beyond its maximum) is reported in `rejected`; only a
// failure without the server's answer is an error.
func delayProduce(a args) (bool, map[string]any) {
	ids, errs := []string{}, []string{}
	deliverAt, handles, rejected := map[string]int64{}, map[string]string{}, map[string]string{}
	result := func() map[string]any {
		return map[string]any{"sent": len(ids), "ids": ids, "deliver_at": deliverAt, "recall_handles": handles,
			"rejected": rejected, "errors": cap20(errs)}
	}
	p, err := startProducer(a)
	if err != nil {
		errs = append(errs, "startup: "+err.Error())
		return false, result()
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	for _, d := range a.delays {
		for j := 0; j < a.count; j++ {
			at := epochMs(time.Now()) + d
			m := a.message(fmt.Sprintf("%s|%d|%d|%d", a.prefix, d, at, j), fmt.Sprintf("%s-key-%d-%d", a.prefix, d, j))
			m.SetDelayTimestamp(time.UnixMilli(at))
			receipt, err := sendOne(ctx, p, m)
			if err != nil {
				rejected[strconv.FormatInt(d, 10)] = err.Error()
				if _, answered := rmq.AsErrRpcStatus(err); !answered {
					errs = append(errs, fmt.Sprintf("send (delay %d ms, #%d): %v", d, j, err))
				}
				continue
			}
			ids = append(ids, receipt.MessageID)
			deliverAt[receipt.MessageID] = at
			if receipt.RecallHandle != "" {
				handles[receipt.MessageID] = receipt.RecallHandle
			}
		}
	}
	r := result()
	r["shutdown_error"] = stopBounded(p.GracefulStop, 15*time.Second)
	return len(errs) == 0, r
}

// timedAwait is timed-consume's long-polling duration: short, so a receipt time does not
// depend much on when a long poll is woken and --linger-ms is not overrun by much, but not
// below 5 s (Apache's minimum: it answers ILLEGAL_POLLING_TIME to a shorter request deadline).
const timedAwait = 5 * time.Second

// timedConsume receives (SimpleConsumer, all tags) and acks until --expect distinct ids came,
// and --linger-ms more; it notes when each id first came and what the server said about it.
func timedConsume(a args) (bool, map[string]any) {
	ids, errs, dupSeen, duplicates := []string{}, []string{}, map[string]bool{}, []string{}
	receivedAt, bodies, deliveryTs, types := map[string]int64{}, map[string]string{}, map[string]int64{}, map[string]string{}
	deliveries := 0
	result := func() map[string]any {
		return map[string]any{"received": deliveries, "ids": ids, "received_at": receivedAt, "bodies": bodies,
			"delivery_timestamp": deliveryTs, "message_type": types, "duplicates": duplicates, "errors": cap20(errs)}
	}
	c, err := rmq.NewSimpleConsumer(a.config(a.group),
		rmq.WithSimpleSubscriptionExpressions(map[string]*rmq.FilterExpression{a.topic: rmq.SUB_ALL}),
		rmq.WithSimpleAwaitDuration(timedAwait))
	if err == nil {
		err = c.Start()
	}
	if err != nil {
		errs = append(errs, "startup: "+err.Error())
		return false, result()
	}
	deadline := time.Now().Add(a.timeout)
	var reached time.Time // when --expect was reached
	for time.Now().Before(deadline) {
		if len(ids) >= a.expect {
			if reached.IsZero() {
				reached = time.Now()
			}
			if time.Since(reached) >= time.Duration(a.lingerMs)*time.Millisecond {
				break
			}
		}
		msgs, err := c.Receive(context.Background(), batch, invisible)
		now := epochMs(time.Now())
		if err != nil {
			if !isNotFound(err) {
				errs = append(errs, "receive: "+err.Error())
				time.Sleep(500 * time.Millisecond)
			}
			continue
		}
		for _, m := range msgs {
			deliveries++
			id := m.GetMessageId()
			if _, seen := receivedAt[id]; seen {
				if !dupSeen[id] {
					dupSeen[id] = true
					duplicates = append(duplicates, id)
				}
			} else {
				ids = append(ids, id)
				receivedAt[id], bodies[id] = now, string(m.GetBody())
				if ts := m.GetDeliveryTimestamp(); ts != nil {
					deliveryTs[id] = epochMs(*ts)
				}
				// The SDK's MessageView has no message type: it is the one the server sent.
				if t := obs.messageType(id); t != "" {
					types[id] = t
				}
				a.noteProgress(len(ids))
			}
			// Ack returns nil on a non-OK answer: the observer has the answer.
			if err := c.Ack(context.Background(), m); err != nil {
				errs = append(errs, fmt.Sprintf("ack %s: %v", id, err))
			} else if !obs.acked(id) {
				errs = append(errs, fmt.Sprintf("ack %s: answer not OK", id))
			}
		}
	}
	r := result()
	r["shutdown_error"] = stopBounded(c.GracefulStop, 15*time.Second)
	return len(ids) >= a.expect && len(errs) == 0, r
}

// recall sends A and B, both due in --delay-ms, then recalls A with its receipt's recall
// handle (the consumer run afterwards must get B only).
func recall(a args) (bool, map[string]any) {
	errs := []string{}
	r := map[string]any{"recall_supported": true, "recall_ok": false, "recalled_id": "", "kept_id": ""}
	p, err := startProducer(a)
	if err != nil {
		r["errors"] = []string{"startup: " + err.Error()}
		return false, r
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	at := time.Now().Add(time.Duration(a.delayMs) * time.Millisecond)
	r["deliver_at"] = epochMs(at)
	receipts := map[string]*rmq.SendReceipt{}
	for _, which := range []string{"A", "B"} {
		m := a.message(fmt.Sprintf("%s|recall|%s", a.prefix, which), fmt.Sprintf("%s-key-recall-%s", a.prefix, which))
		m.SetDelayTimestamp(at)
		receipt, err := sendOne(ctx, p, m)
		if err != nil {
			errs = append(errs, fmt.Sprintf("send %s: %v", which, err))
			continue
		}
		receipts[which] = receipt
	}
	if A, B := receipts["A"], receipts["B"]; A != nil && B != nil {
		r["recalled_id"], r["kept_id"] = A.MessageID, B.MessageID
		if A.RecallHandle == "" {
			errs = append(errs, "the send receipt of A has no recall handle")
		} else if answer, err := p.Recall(ctx, a.topic, A.RecallHandle); err != nil {
			errs = append(errs, "recall: "+err.Error())
		} else {
			r["recall_ok"], r["recall_answer_id"] = true, answer
		}
	}
	r["errors"] = cap20(errs)
	r["shutdown_error"] = stopBounded(p.GracefulStop, 15*time.Second)
	return r["recall_ok"] == true, r
}

// txProduce sends count transactional messages, each in its own transaction, waits --hold-ms
// and commits or rolls back each, or (orphan) returns at once: main then prints the RESULT
// and leaves by os.Exit, with the transactions open and no clean shutdown.
func txProduce(a args) (bool, map[string]any) {
	ids, errs, endedAt := []string{}, []string{}, map[string]int64{}
	var mu sync.Mutex
	checks := 0
	result := func() map[string]any {
		mu.Lock()
		defer mu.Unlock()
		return map[string]any{"sent": len(ids), "ids": ids, "ended_at": endedAt, "check_calls": checks, "errors": cap20(errs)}
	}
	unknown := &rmq.TransactionChecker{Check: func(*rmq.MessageView) rmq.TransactionResolution {
		mu.Lock()
		defer mu.Unlock()
		checks++
		return rmq.UNKNOWN
	}}
	p, err := startProducer(a, rmq.WithTransactionChecker(unknown))
	if err != nil {
		errs = append(errs, "startup: "+err.Error())
		return false, result()
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	txs := []rmq.Transaction{} // parallel to ids
	for i := 0; i < a.count; i++ {
		tx := p.BeginTransaction()
		receipts, err := p.SendWithTransaction(ctx, a.message(fmt.Sprintf("%s-%d", a.prefix, i), fmt.Sprintf("%s-key-%d", a.prefix, i)), tx)
		if err == nil && (len(receipts) != 1 || receipts[0].MessageID == "") {
			err = fmt.Errorf("%d receipts", len(receipts))
		}
		if err != nil {
			errs = append(errs, fmt.Sprintf("send #%d: %v", i, err))
			continue
		}
		ids, txs = append(ids, receipts[0].MessageID), append(txs, tx)
	}
	time.Sleep(time.Duration(a.holdMs) * time.Millisecond)
	if a.resolution == "orphan" {
		return len(ids) == a.count, result()
	}
	for i, tx := range txs {
		end := tx.Commit
		if a.resolution == "rollback" {
			end = tx.RollBack
		}
		if err := end(); err != nil {
			errs = append(errs, fmt.Sprintf("%s %s: %v", a.resolution, ids[i], err))
			continue
		}
		endedAt[ids[i]] = epochMs(time.Now())
	}
	r := result()
	r["shutdown_error"] = stopBounded(p.GracefulStop, 15*time.Second)
	return len(ids) == a.count && len(endedAt) == a.count, r
}

// txCheck is the producer that answers the server's transaction checks: COMMIT for this run's
// messages ("<prefix>-..."), UNKNOWN otherwise. It runs until --expect distinct messages were
// checked, then 3 s more so the SDK's EndTransaction calls finish.
func txCheck(a args) (bool, map[string]any) {
	var mu sync.Mutex
	checkedAt, calls, errs := map[string]int64{}, 0, []string{}
	checker := &rmq.TransactionChecker{Check: func(m *rmq.MessageView) rmq.TransactionResolution {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if _, seen := checkedAt[m.GetMessageId()]; !seen {
			checkedAt[m.GetMessageId()] = epochMs(time.Now())
		}
		if strings.HasPrefix(string(m.GetBody()), a.prefix+"-") {
			return rmq.COMMIT
		}
		return rmq.UNKNOWN
	}}
	checked := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(checkedAt)
	}
	r := map[string]any{}
	p, err := startProducer(a, rmq.WithTransactionChecker(checker))
	if err != nil {
		errs = append(errs, "startup: "+err.Error())
	} else {
		deadline := time.Now().Add(a.timeout)
		for checked() < a.expect && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if checked() >= a.expect {
			time.Sleep(3 * time.Second)
		}
		r["shutdown_error"] = stopBounded(p.GracefulStop, 15*time.Second)
	}
	// The SDK only logs a failed EndTransaction: the observer's answers tell.
	ended, failures := obs.endTransactions()
	committed := 0
	for _, res := range ended {
		if res == "COMMIT" {
			committed++
		}
	}
	commitFailed := false
	for _, f := range failures {
		commitFailed = commitFailed || f.resolution == "COMMIT"
		errs = append(errs, fmt.Sprintf("end transaction %s (%s): %s", f.id, f.resolution, f.reason))
	}
	mu.Lock()
	defer mu.Unlock()
	r["checked"], r["checked_at"], r["check_calls"] = len(checkedAt), checkedAt, calls
	r["committed"], r["errors"] = committed, cap20(errs)
	return len(checkedAt) >= a.expect && !commitFailed, r
}

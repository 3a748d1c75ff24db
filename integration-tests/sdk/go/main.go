// End-to-end driver for the official RocketMQ Go SDK (github.com/apache/rocketmq-clients/golang/v5,
// version pinned in go.mod).
//
// Usage: rmq-sdk-go MODE --endpoint HOST:PORT --topic T
//
//	[--group G] [--count N] [--prefix P] [--tag TAG] [--timeout-secs S]
//	[--tls] [--progress] [--fail-every K] [--pause-ms M] [--threads T]
//	[--namespace NS] (every client in namespace NS: rmq.Config.NameSpace)
//
// MODE is produce, simple-consume or push-consume (this file), or one of the FIFO, delay,
// recall and transaction modes of integration-tests/sdk/MESSAGE_TYPES.md (types.go, with
// their own options), an offset-reset mode (reset.go), an SQL92 filter mode (filters.go) or
// a consumption mode (consumption.go).
//
// Options fall back to RMQ_E2E_<NAME> environment variables. Prints exactly one line
// "RESULT <json>" on stdout (the fields of integration-tests/src/sdk.rs `Report`, plus
// sdk_version, attempts, unacked, failed_on_purpose, succeeded_after_failure, transport);
// exit code 0 means the mode's goal was met. With --progress, consumers also print
// "PROGRESS received=K" on stdout whenever K grows, so a test can act in the middle of a run.
//
// The SDK is plaintext unless --tls (it defaults to TLS). It logs to $rocketmq.client.logRoot
// (set by the test harness), else to $RMQ_E2E_HOME/logs/rocketmq.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	rmq "github.com/apache/rocketmq-clients/golang/v5"
	"github.com/apache/rocketmq-clients/golang/v5/credentials"
	v2 "github.com/apache/rocketmq-clients/golang/v5/protocol/v2"
)

const (
	invisible     = 30 * time.Second
	awaitDuration = 10 * time.Second
	batch         = 16
)

type args struct {
	mode, endpoint, topic, group, prefix, tag string
	namespace                                 string
	count, failEvery, pauseMs, threads        int
	timeout                                   time.Duration
	tls, progress                             bool
	typeArgs                                  // options of the modes in types.go
	consumeArgs                               // options of the modes in consumption.go
	filterArgs                                // options of the modes in filters.go
}

// modes maps each mode to its function: ok (the mode's goal was met) and the RESULT fields.
var modes = map[string]func(args) (bool, map[string]any){
	"produce": produce, "simple-consume": simpleConsume, "push-consume": pushConsume,
	"fifo-produce": fifoProduce, "fifo-consume": fifoConsume,
	"delay-produce": delayProduce, "timed-consume": timedConsume, "recall": recall,
	"tx-produce": txProduce, "tx-check": txCheck,
	"retry-run": retryRun,
	"reset-simple-consume": resetSimpleConsume, "reset-push-consume": resetPushConsume,
	"filter-produce": filterProduce, "filter-consume": filterConsume,
}

func env(name, def string) string {
	if v, ok := os.LookupEnv("RMQ_E2E_" + name); ok {
		return v
	}
	return def
}

func envInt(name string, def int) int {
	v, err := strconv.Atoi(env(name, strconv.Itoa(def)))
	if err != nil {
		return def
	}
	return v
}

func parseArgs() (args, error) {
	var a args
	if len(os.Args) < 2 {
		return a, errors.New("usage: rmq-sdk-go MODE --endpoint HOST:PORT --topic T ...")
	}
	a.mode = os.Args[1]
	if _, known := modes[a.mode]; !known {
		return a, fmt.Errorf("unknown mode %q", a.mode)
	}
	fs := flag.NewFlagSet(a.mode, flag.ContinueOnError)
	fs.StringVar(&a.endpoint, "endpoint", env("ENDPOINT", ""), "gateway host:port")
	fs.StringVar(&a.topic, "topic", env("TOPIC", ""), "topic")
	fs.StringVar(&a.group, "group", env("GROUP", "go-e2e-group"), "consumer group")
	fs.IntVar(&a.count, "count", envInt("COUNT", 50), "messages")
	fs.StringVar(&a.prefix, "prefix", env("PREFIX", "go"), "bodies are <prefix>-<i>")
	fs.StringVar(&a.tag, "tag", env("TAG", "e2e"), "tag (sent, and the consumers' filter)")
	secs := fs.Float64("timeout-secs", float64(envInt("TIMEOUT_SECS", 60)), "budget of the main loop")
	fs.BoolVar(&a.tls, "tls", false, "use TLS (the SDK's default); plaintext otherwise")
	fs.StringVar(&a.namespace, "namespace", env("NAMESPACE", ""), "namespace of every client (rmq.Config.NameSpace)")
	fs.BoolVar(&a.progress, "progress", false, "consumers: print PROGRESS received=K on stdout")
	fs.IntVar(&a.failEvery, "fail-every", 0, "push-consume, fifo-consume: fail the first delivery of every K-th message")
	fs.IntVar(&a.pauseMs, "pause-ms", 0, "consumers: sleep this long per accepted message")
	fs.IntVar(&a.threads, "threads", 0, "push-consume: consumption threads (0: the SDK's default)")
	a.typeArgs.register(fs)
	a.consumeArgs.register(fs)
	a.filterArgs.register(fs)
	if err := fs.Parse(os.Args[2:]); err != nil {
		return a, err
	}
	if fs.NArg() > 0 {
		return a, fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if a.endpoint == "" || a.topic == "" {
		return a, errors.New("--endpoint and --topic are required")
	}
	a.timeout = time.Duration(*secs * float64(time.Second))
	return a, a.typeArgs.check(a.mode, a.count)
}

func (a args) config(group string) *rmq.Config {
	// Up to v5.1.3 a nil Credentials panics (and Config validates it as required).
	return &rmq.Config{
		Endpoint: a.endpoint, NameSpace: a.namespace, ConsumerGroup: group,
		Credentials: &credentials.SessionCredentials{},
	}
}

func (a args) noteProgress(n int) {
	if a.progress {
		fmt.Printf("PROGRESS received=%d\n", n)
	}
}

// sdkVersion is the version of the SDK module this binary was built with (from go.mod).
func sdkVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, d := range info.Deps {
			if d.Path == "github.com/apache/rocketmq-clients/golang/v5" {
				if d.Replace != nil {
					return d.Replace.Version
				}
				return strings.TrimPrefix(d.Version, "v")
			}
		}
	}
	return "unknown"
}

// stopBounded runs stop on a goroutine; an error string, or "" if it finished cleanly in time.
func stopBounded(stop func() error, limit time.Duration) any {
	done := make(chan error, 1)
	go func() { done <- stop() }()
	select {
	case err := <-done:
		if err != nil {
			return err.Error()
		}
		return nil
	case <-time.After(limit):
		return fmt.Sprintf("GracefulStop did not finish within %v", limit)
	}
}

func cap20(s []string) []string {
	if s == nil {
		return []string{} // never JSON null: the harness reads a list
	}
	if len(s) > 20 {
		return s[:20]
	}
	return s
}

// produce sends count messages: the first half with Send, the second with SendAsync.
func produce(a args) (bool, map[string]any) {
	r := map[string]any{}
	errs := []string{}
	ids := make([]string, a.count)
	p, err := rmq.NewProducer(a.config(""), rmq.WithTopics(a.topic))
	if err == nil {
		err = p.Start()
	}
	if err != nil {
		r["sent"], r["failed"], r["ids"], r["errors"] = 0, a.count, []string{}, []string{"startup: " + err.Error()}
		return false, r
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	message := func(i int) *rmq.Message {
		m := &rmq.Message{Topic: a.topic, Body: []byte(fmt.Sprintf("%s-%d", a.prefix, i))}
		m.SetTag(a.tag)
		m.SetKeys(fmt.Sprintf("%s-key-%d", a.prefix, i))
		return m
	}
	var mu sync.Mutex
	failed, sentAsync := 0, 0
	note := func(i int, receipts []*rmq.SendReceipt, err error, async bool) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			failed++
			errs = append(errs, fmt.Sprintf("send #%d (async=%v): %v", i, async, err))
		case len(receipts) != 1 || receipts[0].MessageID == "":
			failed++
			errs = append(errs, fmt.Sprintf("send #%d: %d receipts", i, len(receipts)))
		default:
			ids[i] = receipts[0].MessageID
			if async {
				sentAsync++
			}
		}
	}
	half := a.count / 2
	for i := 0; i < half; i++ {
		receipts, err := p.Send(ctx, message(i))
		note(i, receipts, err, false)
	}
	var wg sync.WaitGroup
	for i := half; i < a.count; i++ {
		wg.Add(1)
		p.SendAsync(ctx, message(i), func(_ context.Context, receipts []*rmq.SendReceipt, err error) {
			defer wg.Done()
			note(i, receipts, err, true)
		})
	}
	wg.Wait()
	sent := []string{}
	for _, id := range ids {
		if id != "" {
			sent = append(sent, id)
		}
	}
	ok := len(sent) == a.count
	if !ok {
		// keep positions meaningful only when complete; otherwise report what was sent
		ids = sent
	}
	r["sent"], r["failed"], r["ids"], r["sent_async"] = len(sent), failed, ids, sentAsync
	r["errors"] = cap20(errs)
	r["shutdown_error"] = stopBounded(p.GracefulStop, 15*time.Second)
	return ok, r
}

// propsMismatch: what differs between a delivery's tag and keys and what every driver's
// producer sets (tag --tag, keys ["<prefix>-key-<i>"]); "" if nothing.
func (a args) propsMismatch(m *rmq.MessageView, i int) string {
	tag := "<none>"
	if t := m.GetTag(); t != nil {
		tag = *t
	}
	wantKey := fmt.Sprintf("%s-key-%d", a.prefix, i)
	if keys := m.GetKeys(); tag != a.tag || len(keys) != 1 || keys[0] != wantKey {
		return fmt.Sprintf("%s: tag %q keys %q, expected tag %q keys [%q]", m.GetMessageId(), tag, keys, a.tag, wantKey)
	}
	return ""
}

func isNotFound(err error) bool {
	var st *rmq.ErrRpcStatus
	return errors.As(err, &st) && st.GetCode() == int32(v2.Code_MESSAGE_NOT_FOUND)
}

// simpleConsume receives and acks until all bodies arrived. The first message first gets a
// new invisible duration (ChangeInvisibleDuration) and is then acked with the new handle.
func simpleConsume(a args) (bool, map[string]any) {
	r := map[string]any{}
	tally := NewTally(a.prefix, a.count)
	errs := []string{}
	calls, recvErrors, notFound, maxAttempt, changed, tried := 0, 0, 0, int32(0), 0, false
	mismatches := []string{}
	finish := func() map[string]any {
		r["property_mismatches"] = cap20(mismatches)
		tally.Report(r)
		obs.report(r, tally.IDs())
		r["receive_calls"], r["receive_errors"], r["receive_empty"] = calls, recvErrors, notFound
		r["max_delivery_attempt"], r["errors"] = maxAttempt, cap20(errs)
		// Counted only if the server answered OK and the message was then acked.
		r["changed_invisible"] = changed
		return r
	}
	c, err := rmq.NewSimpleConsumer(a.config(a.group),
		rmq.WithSimpleSubscriptionExpressions(map[string]*rmq.FilterExpression{a.topic: rmq.NewFilterExpression(a.tag)}),
		rmq.WithSimpleAwaitDuration(awaitDuration))
	if err == nil {
		err = c.Start()
	}
	if err != nil {
		errs = append(errs, "startup: "+err.Error())
		return false, finish()
	}
	deadline := time.Now().Add(a.timeout)
	for !tally.Complete() && time.Now().Before(deadline) {
		calls++
		msgs, err := c.Receive(context.Background(), batch, invisible)
		if err != nil {
			if isNotFound(err) {
				notFound++
				continue
			}
			recvErrors++
			errs = append(errs, "receive: "+err.Error())
			time.Sleep(500 * time.Millisecond)
			continue
		}
		for _, m := range msgs {
			maxAttempt = max(maxAttempt, m.GetDeliveryAttempt())
			tally.Attempt(m.GetMessageId(), m.GetDeliveryAttempt())
			if tally.Record(m.GetMessageId(), m.GetBody()) {
				a.noteProgress(tally.Len())
				if bad := a.propsMismatch(m, tally.Index(m.GetBody())); bad != "" {
					mismatches = append(mismatches, bad)
				}
			}
			if !tried {
				tried = true
				old := m.GetReceiptHandle()
				if err := c.ChangeInvisibleDuration(m, invisible); err != nil {
					errs = append(errs, fmt.Sprintf("change invisible %s: %v", m.GetMessageId(), err))
				} else if m.GetReceiptHandle() == old || m.GetReceiptHandle() == "" {
					errs = append(errs, fmt.Sprintf("change invisible %s: receipt handle not renewed (%q)", m.GetMessageId(), m.GetReceiptHandle()))
				} else {
					changed = -1 // acked below with the new handle
				}
			}
			if err := c.Ack(context.Background(), m); err != nil {
				errs = append(errs, fmt.Sprintf("ack %s: %v", m.GetMessageId(), err))
			}
			if changed == -1 {
				changed = 0
				if obs.acked(m.GetMessageId()) {
					changed = 1
				} else {
					errs = append(errs, fmt.Sprintf("ack with the renewed handle of %s was not OK", m.GetMessageId()))
				}
			}
			if a.pauseMs > 0 {
				time.Sleep(time.Duration(a.pauseMs) * time.Millisecond)
			}
		}
	}
	r["shutdown_error"] = stopBounded(c.GracefulStop, 15*time.Second)
	finish()
	ok := tally.Complete() && r["ack_failed"] == 0 && r["corrupted"] == 0 && changed == 1 && len(mismatches) == 0
	return ok, r
}

// pushConsume runs a PushConsumer until every body was consumed successfully and acked.
// With --fail-every K the listener fails the first delivery of every K-th message
// (indexes K-1, 2K-1, ...), which the SDK nacks so the server delivers it again.
func pushConsume(a args) (bool, map[string]any) {
	r := map[string]any{}
	tally := NewTally(a.prefix, a.count)
	var mu sync.Mutex
	failedOnPurpose := map[int]int32{} // index -> delivery attempt of the failed delivery
	failedIDs := map[string]int32{}    // message id -> the same
	succeededAfter := map[string]int32{}
	mismatches := []string{}
	calls, maxAttempt := 0, int32(0)
	listener := &rmq.FuncMessageListener{Consume: func(m *rmq.MessageView) rmq.ConsumerResult {
		mu.Lock()
		calls++
		id, attempt := m.GetMessageId(), m.GetDeliveryAttempt()
		maxAttempt = max(maxAttempt, attempt)
		tally.Attempt(id, attempt)
		i := tally.Index(m.GetBody())
		if a.failEvery > 0 && i >= 0 && (i+1)%a.failEvery == 0 {
			if _, done := failedOnPurpose[i]; !done {
				failedOnPurpose[i] = attempt
				failedIDs[id] = attempt
				mu.Unlock()
				return rmq.FAILURE
			}
		}
		if tally.Record(id, m.GetBody()) {
			if _, failed := failedIDs[id]; failed {
				succeededAfter[id] = attempt
			}
			if bad := a.propsMismatch(m, i); bad != "" {
				mismatches = append(mismatches, bad)
			}
			a.noteProgress(tally.Len())
		}
		mu.Unlock()
		if a.pauseMs > 0 {
			time.Sleep(time.Duration(a.pauseMs) * time.Millisecond)
		}
		return rmq.SUCCESS
	}}
	opts := []rmq.PushConsumerOption{
		rmq.WithPushSubscriptionExpressions(map[string]*rmq.FilterExpression{a.topic: rmq.NewFilterExpression(a.tag)}),
		rmq.WithPushMessageListener(listener),
	}
	if a.threads > 0 {
		opts = append(opts, rmq.WithPushConsumptionThreadCount(int32(a.threads)))
	}
	finish := func(errs []string) map[string]any {
		mu.Lock()
		defer mu.Unlock()
		tally.Report(r)
		obs.report(r, tally.IDs())
		r["failed_on_purpose"], r["succeeded_after_failure"] = failedIDs, succeededAfter
		r["property_mismatches"] = cap20(mismatches)
		r["consume_calls"], r["max_delivery_attempt"], r["errors"] = calls, maxAttempt, cap20(errs)
		return r
	}
	c, err := rmq.NewPushConsumer(a.config(a.group), opts...)
	if err == nil {
		err = c.Start()
	}
	if err != nil {
		return false, finish([]string{"startup: " + err.Error()})
	}
	deadline := time.Now().Add(a.timeout)
	done := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return tally.Complete() && obs.allAcked(tally.IDs())
	}
	for !done() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	complete := done()
	r["shutdown_error"] = stopBounded(c.GracefulStop, 40*time.Second)
	finish(nil)
	return complete && r["corrupted"] == 0 && len(mismatches) == 0, r
}

func main() {
	started := time.Now()
	a, err := parseArgs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if _, set := os.LookupEnv(rmq.CLIENT_LOG_ROOT); !set {
		home := os.Getenv("RMQ_E2E_HOME")
		if home == "" {
			exe, _ := os.Executable()
			home = filepath.Join(filepath.Dir(exe), "..", "home")
		}
		os.Setenv(rmq.CLIENT_LOG_ROOT, filepath.Join(home, "logs", "rocketmq"))
		rmq.ResetLogger()
	}
	rmq.EnableSsl = a.tls
	obs.install()
	run := modes[a.mode]
	ok, r := func() (ok bool, r map[string]any) {
		defer func() {
			if p := recover(); p != nil {
				ok, r = false, map[string]any{"errors": []string{fmt.Sprintf("panic: %v", p)}}
			}
		}()
		return run(a)
	}()
	t := map[string]any{}
	obs.report(t, nil)
	r["transport"] = t["transport"]
	r["sdk"], r["mode"], r["ok"], r["topic"], r["group"], r["count"] = "go", a.mode, ok, a.topic, a.group, a.count
	r["tls"], r["sdk_version"] = a.tls, sdkVersion()
	r["elapsed_ms"] = time.Since(started).Milliseconds()
	line, err := json.Marshal(r)
	if err != nil {
		line = []byte(fmt.Sprintf(`{"sdk":"go","mode":%q,"ok":false,"errors":[%q]}`, a.mode, err.Error()))
	}
	fmt.Println("RESULT " + string(line))
	if ok {
		os.Exit(0)
	}
	os.Exit(1)
}

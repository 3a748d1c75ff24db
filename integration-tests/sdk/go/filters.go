package main

// The SQL92 filter modes of integration-tests/sdk/MESSAGE_TYPES.md: filter-produce sends the
// messages of a tab-separated file (tag, keys, user properties); filter-consume runs one
// SimpleConsumer per line of a filters file, each subscribed with its SQL92 expression
// (rmq.NewFilterExpressionWithType(expr, rmq.SQL92)), and reports the bodies each received or
// the error the SDK returned.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	rmq "github.com/apache/rocketmq-clients/golang/v5"
)

// filterAwait is the filter consumers' long-polling duration: short, so a linger ends close to
// its time.
const filterAwait = 2 * time.Second

// filterArgs are the options of these modes (--linger-ms is typeArgs.lingerMs).
type filterArgs struct {
	messages string // filter-produce: the messages file
	filters  string // filter-consume: the filters file
	parallel int    // filter-consume: consumers running at once
}

func (f *filterArgs) register(fs *flag.FlagSet) {
	fs.StringVar(&f.messages, "messages", "", "filter-produce: lines body<TAB>tag<TAB>keys<TAB>name=value...")
	fs.StringVar(&f.filters, "filters", "", "filter-consume: lines name<TAB>group<TAB>start|late<TAB>expect<TAB>expression")
	fs.IntVar(&f.parallel, "parallel", 8, "filter-consume: consumers running at once")
}

// tsvRows reads the non-empty lines of a tab-separated file, split on tabs.
func tsvRows(path string) ([][]string, error) {
	if path == "" {
		return nil, errors.New("the file option is required")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rows [][]string
	for _, line := range strings.Split(string(data), "\n") {
		if line != "" {
			rows = append(rows, strings.Split(line, "\t"))
		}
	}
	return rows, nil
}

// filterProduce sends one message per line, synchronously, in file order.
func filterProduce(a args) (bool, map[string]any) {
	ids, errs := []string{}, []string{}
	result := func() map[string]any { return map[string]any{"sent": len(ids), "ids": ids, "errors": cap20(errs)} }
	rows, err := tsvRows(a.messages)
	if err != nil {
		errs = append(errs, "--messages: "+err.Error())
		return false, result()
	}
	p, err := startProducer(a)
	if err != nil {
		errs = append(errs, "startup: "+err.Error())
		return false, result()
	}
	for _, row := range rows {
		m := &rmq.Message{Topic: a.topic, Body: []byte(row[0])}
		if len(row) > 1 && row[1] != "" {
			m.SetTag(row[1])
		}
		if len(row) > 2 && row[2] != "" {
			m.SetKeys(strings.Split(row[2], " ")...)
		}
		for _, kv := range row[min(3, len(row)):] {
			k, v, _ := strings.Cut(kv, "=")
			m.AddProperty(k, v)
		}
		receipt, err := sendOne(context.Background(), p, m)
		if err != nil {
			errs = append(errs, fmt.Sprintf("send %s: %v", row[0], err))
			continue
		}
		ids = append(ids, receipt.MessageID)
	}
	r := result()
	r["shutdown_error"] = stopBounded(p.GracefulStop, 15*time.Second)
	return len(ids) == len(rows), r
}

// filterConsume runs one consumer per line of --filters, --parallel at a time.
func filterConsume(a args) (bool, map[string]any) {
	rows, err := tsvRows(a.filters)
	if err != nil {
		return false, map[string]any{"errors": []string{"--filters: " + err.Error()}}
	}
	results := make([]map[string]any, len(rows))
	slots := make(chan struct{}, max(1, a.parallel))
	var wg sync.WaitGroup
	for i, row := range rows {
		if len(row) < 5 {
			return false, map[string]any{"errors": []string{fmt.Sprintf("--filters line %d: %q", i+1, row)}}
		}
		expect, err := strconv.Atoi(row[3])
		if err != nil {
			return false, map[string]any{"errors": []string{fmt.Sprintf("--filters line %d: expect %q", i+1, row[3])}}
		}
		wg.Add(1)
		go func(i int, group string, late bool, expect int, expression string) {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			results[i] = filterConsumeOne(a, group, late, expect, expression)
		}(i, row[1], row[2] == "late", expect, row[4])
	}
	wg.Wait()
	filters, ok := map[string]any{}, true
	for i, row := range rows {
		ok = ok && results[i]["ok"] == true
		filters[row[0]] = results[i]
	}
	return ok, map[string]any{"filters": filters, "errors": []string{}}
}

// filterConsumeOne is a SimpleConsumer of group subscribed with expression (SQL92) when started,
// or (late) started with TAG * and then subscribed to it, so the expression first reaches the
// server in ReceiveMessage rather than in the Settings. It receives until expect distinct
// messages came and --linger-ms more passed; with expect below 0 (a refused expression) it
// makes a single receive.
func filterConsumeOne(a args, group string, late bool, expect int, expression string) map[string]any {
	bodies, seen, duplicates, receiveErrors := []string{}, map[string]bool{}, 0, 0
	var startupError, receiveError, shutdownError any
	var ackErrors []string
	sql := rmq.NewFilterExpressionWithType(expression, rmq.SQL92)
	first := sql
	if late {
		first = rmq.SUB_ALL
	}
	c, err := rmq.NewSimpleConsumer(a.config(group),
		rmq.WithSimpleSubscriptionExpressions(map[string]*rmq.FilterExpression{a.topic: first}),
		rmq.WithSimpleAwaitDuration(filterAwait))
	if err == nil {
		err = c.Start()
		if err == nil && late {
			err = c.Subscribe(a.topic, sql)
		}
		if err != nil {
			shutdownError = stopBounded(c.GracefulStop, 15*time.Second)
		}
	}
	if err != nil {
		startupError, c = err.Error(), nil
	}
	deadline := time.Now().Add(a.timeout)
	var reached time.Time
	for c != nil && time.Now().Before(deadline) {
		if expect >= 0 && len(seen) >= expect {
			if reached.IsZero() {
				reached = time.Now()
			}
			if time.Since(reached) >= time.Duration(a.lingerMs)*time.Millisecond {
				break
			}
		}
		msgs, err := c.Receive(context.Background(), 32, invisible)
		if err != nil && !isNotFound(err) {
			receiveErrors++
			if receiveError == nil {
				receiveError = err.Error()
			}
			if expect < 0 {
				break
			}
			time.Sleep(300 * time.Millisecond)
			continue
		}
		for _, m := range msgs {
			id := m.GetMessageId()
			if seen[id] {
				duplicates++
			} else {
				seen[id] = true
				bodies = append(bodies, string(m.GetBody()))
			}
			if err := c.Ack(context.Background(), m); err != nil {
				ackErrors = append(ackErrors, fmt.Sprintf("ack %s: %v", id, err))
			}
		}
		if expect < 0 {
			break
		}
	}
	if c != nil {
		shutdownError = stopBounded(c.GracefulStop, 15*time.Second)
	}
	ok := startupError == nil && len(seen) >= expect
	if expect < 0 {
		ok = startupError != nil || receiveError != nil
	}
	return map[string]any{"bodies": bodies, "duplicates": duplicates, "startup_error": startupError,
		"receive_error": receiveError, "receive_errors": receiveErrors, "ack_errors": cap20(ackErrors),
		"shutdown_error": shutdownError, "ok": ok}
}

package main

// The observer watches the SDK's own gRPC calls (through the SDK's public NewRpcClient hook
// and grpc-go interceptors) without changing them. It exists because the Go SDK hides what
// a test must check:
//   - SimpleConsumer.Ack returns nil when the server answers with a non-OK status, and the
//     PushConsumer acks and nacks on its own: the observer records every Ack and
//     ChangeInvisibleDuration answer per message id;
//   - MessageView does not expose whether its body digest matched: the observer checks each
//     received message's digest with the SDK's own rule;
//   - which transport (TLS or plaintext) was used: the observer reads the peer's auth info;
//   - MessageView has no message type: the observer notes each received message's type;
//   - a transaction checker's answer is sent by the SDK, which only logs a failure: the
//     observer records every EndTransaction answer.

import (
	"context"
	"crypto/md5"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
	"sync"

	rmq "github.com/apache/rocketmq-clients/golang/v5"
	v2 "github.com/apache/rocketmq-clients/golang/v5/protocol/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
)

type observer struct {
	mu           sync.Mutex
	ackOK        map[string]int // message id -> OK ack entries
	ackErrors    []string       // non-OK ack entries and failed Ack RPCs (possibly retried later)
	changeOK     map[string]int // message id -> OK ChangeInvisibleDuration answers
	changeFailed int
	transports   map[string]int    // "tls" / "plaintext" -> unary calls
	delivered    int               // messages seen on ReceiveMessage streams
	corrupted    []string          // ids whose body digest does not match (the SDK's comparison)
	digestCase   []string          // ... of which only the letter case of the hex differs
	msgTypes     map[string]string // message id -> message type of its deliveries (FIFO, DELAY, ...)
	endOK        map[string]string // message id -> resolution of an EndTransaction answered OK
	endFailed    []endFailure      // EndTransaction calls that failed or were answered non-OK
}

// endFailure is an EndTransaction call that failed or was answered non-OK.
type endFailure struct {
	id, resolution, reason string
}

var obs = &observer{ackOK: map[string]int{}, changeOK: map[string]int{}, transports: map[string]int{},
	msgTypes: map[string]string{}, endOK: map[string]string{}}

// install makes every connection the SDK opens from now on carry the observer's interceptors.
func (o *observer) install() {
	orig := rmq.NewRpcClient
	rmq.NewRpcClient = func(target string, opts ...rmq.RpcClientOption) (rmq.RpcClient, error) {
		extra := rmq.WithRpcClientConnOption(rmq.WithDialOptions(
			grpc.WithChainUnaryInterceptor(o.unary),
			grpc.WithChainStreamInterceptor(o.stream),
		))
		return orig(target, append(opts, extra)...)
	}
}

func (o *observer) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var p peer.Peer
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Peer(&p))...)
	o.mu.Lock()
	defer o.mu.Unlock()
	if p.Addr != nil {
		if p.AuthInfo != nil && p.AuthInfo.AuthType() == "tls" {
			o.transports["tls"]++
		} else {
			o.transports["plaintext"]++
		}
	}
	switch r := reply.(type) {
	case *v2.AckMessageResponse:
		q, _ := req.(*v2.AckMessageRequest)
		if err != nil {
			for _, e := range q.GetEntries() {
				o.ackErrors = append(o.ackErrors, fmt.Sprintf("ack %s: rpc error: %v", e.GetMessageId(), err))
			}
			return err
		}
		if len(r.GetEntries()) == 0 {
			// No per-entry answer: the overall status stands for every entry.
			for _, e := range q.GetEntries() {
				o.noteAck(e.GetMessageId(), r.GetStatus())
			}
		}
		for _, e := range r.GetEntries() {
			o.noteAck(e.GetMessageId(), e.GetStatus())
		}
	case *v2.ChangeInvisibleDurationResponse:
		q, _ := req.(*v2.ChangeInvisibleDurationRequest)
		if err == nil && r.GetStatus().GetCode() == v2.Code_OK {
			o.changeOK[q.GetMessageId()]++
		} else {
			o.changeFailed++
		}
	case *v2.EndTransactionResponse:
		q, _ := req.(*v2.EndTransactionRequest)
		id, resolution := q.GetMessageId(), q.GetResolution().String()
		switch {
		case err != nil:
			o.endFailed = append(o.endFailed, endFailure{id, resolution, "rpc error: " + err.Error()})
		case r.GetStatus().GetCode() != v2.Code_OK:
			o.endFailed = append(o.endFailed, endFailure{id, resolution,
				fmt.Sprintf("%v %s", r.GetStatus().GetCode(), r.GetStatus().GetMessage())})
		default:
			o.endOK[id] = resolution
		}
	}
	return err
}

func (o *observer) noteAck(id string, st *v2.Status) {
	if st.GetCode() == v2.Code_OK {
		o.ackOK[id]++
	} else {
		o.ackErrors = append(o.ackErrors, fmt.Sprintf("ack %s: %v %s", id, st.GetCode(), st.GetMessage()))
	}
}

func (o *observer) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil || !strings.HasSuffix(method, "/ReceiveMessage") {
		return s, err
	}
	return &watchedStream{ClientStream: s, o: o}, nil
}

type watchedStream struct {
	grpc.ClientStream
	o *observer
}

func (w *watchedStream) RecvMsg(m any) error {
	err := w.ClientStream.RecvMsg(m)
	if r, ok := m.(*v2.ReceiveMessageResponse); ok && err == nil && r.GetMessage() != nil {
		w.o.noteMessage(r.GetMessage())
	}
	return err
}

// noteMessage checks the body digest exactly as the SDK does (message.go: upper-case hex).
func (o *observer) noteMessage(m *v2.Message) {
	d := m.GetSystemProperties().GetBodyDigest()
	var want string
	switch d.GetType() {
	case v2.DigestType_CRC32:
		want = strings.ToUpper(strconv.FormatInt(int64(crc32.ChecksumIEEE(m.GetBody())), 16))
	case v2.DigestType_MD5:
		sum := md5.Sum(m.GetBody())
		want = strings.ToUpper(hex.EncodeToString(sum[:]))
	case v2.DigestType_SHA1:
		sum := sha1.Sum(m.GetBody())
		want = strings.ToUpper(hex.EncodeToString(sum[:]))
	default:
		want = "<unsupported digest type " + d.GetType().String() + ">"
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.delivered++
	id := m.GetSystemProperties().GetMessageId()
	o.msgTypes[id] = m.GetSystemProperties().GetMessageType().String()
	if d.GetChecksum() != want {
		o.corrupted = append(o.corrupted, id)
		if strings.EqualFold(d.GetChecksum(), want) {
			o.digestCase = append(o.digestCase, id)
		}
	}
}

func (o *observer) acked(id string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ackOK[id] > 0
}

// messageType of a received message as the server sent it ("" if not seen).
func (o *observer) messageType(id string) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.msgTypes[id]
}

// endTransactions: the ids whose EndTransaction was answered OK (id -> resolution), and the
// failed EndTransaction calls.
func (o *observer) endTransactions() (map[string]string, []endFailure) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ok := map[string]string{}
	for id, res := range o.endOK {
		ok[id] = res
	}
	return ok, append([]endFailure{}, o.endFailed...)
}

// allAcked: every id has an OK ack answer.
func (o *observer) allAcked(ids []string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, id := range ids {
		if o.ackOK[id] == 0 {
			return false
		}
	}
	return true
}

// report adds what was observed; ids are the deliveries the driver accepted.
func (o *observer) report(r map[string]any, ids []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	acked, unacked := 0, []string{}
	for _, id := range ids {
		if o.ackOK[id] > 0 {
			acked++
		} else {
			unacked = append(unacked, id)
		}
	}
	r["acked"] = acked
	r["ack_failed"] = len(unacked) // accepted deliveries never acked OK (transient errors: ack_errors)
	r["unacked"] = unacked
	errs := append([]string{}, o.ackErrors...)
	if len(errs) > 20 {
		errs = errs[:20]
	}
	r["ack_errors"] = len(o.ackErrors)
	r["ack_error_samples"] = errs
	r["change_invisible_ok"] = len(o.changeOK)
	r["change_invisible_failed"] = o.changeFailed
	r["delivered"] = o.delivered
	r["corrupted"] = len(o.corrupted)
	r["corrupted_ids"] = append([]string{}, o.corrupted...)
	r["digest_case_only"] = len(o.digestCase)
	switch {
	case o.transports["tls"] > 0 && o.transports["plaintext"] > 0:
		r["transport"] = "mixed"
	case o.transports["tls"] > 0:
		r["transport"] = "tls"
	case o.transports["plaintext"] > 0:
		r["transport"] = "plaintext"
	default:
		r["transport"] = ""
	}
}

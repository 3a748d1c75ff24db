package main

import (
	"strconv"
	"strings"
)

// Tally is what a consumer has seen, checked against the expected bodies
// "<prefix>-0" .. "<prefix>-<count-1>" (the same bookkeeping as python/tally.py).
type Tally struct {
	prefix     string
	count      int
	received   map[int]string     // body index -> message id of the first accepted delivery
	attempts   map[string][]int32 // message id -> delivery attempt of every delivery (failed ones too)
	seenIDs    map[string]bool
	duplicates []string
	unexpected []string
}

func NewTally(prefix string, count int) *Tally {
	return &Tally{prefix: prefix, count: count, received: map[int]string{}, attempts: map[string][]int32{},
		seenIDs: map[string]bool{}, duplicates: []string{}, unexpected: []string{}}
}

// Index returns the body's index, or -1 if it is not one of the expected bodies.
func (t *Tally) Index(body []byte) int {
	text := string(body)
	if !strings.HasPrefix(text, t.prefix+"-") {
		return -1
	}
	tail := text[len(t.prefix)+1:]
	if tail == "" || strings.Trim(tail, "0123456789") != "" {
		return -1
	}
	i, err := strconv.Atoi(tail)
	if err != nil || i >= t.count {
		return -1
	}
	return i
}

// Attempt notes one delivery's attempt (every delivery, including those then failed).
func (t *Tally) Attempt(id string, attempt int32) {
	t.attempts[id] = append(t.attempts[id], attempt)
}

// Record records one accepted delivery; true if it was a new, expected message.
func (t *Tally) Record(id string, body []byte) bool {
	i := t.Index(body)
	if i < 0 {
		text := string(body)
		if len(text) > 80 {
			text = text[:80]
		}
		t.unexpected = append(t.unexpected, text)
		return false
	}
	if _, dup := t.received[i]; dup || t.seenIDs[id] {
		t.duplicates = append(t.duplicates, id)
		return false
	}
	t.seenIDs[id] = true
	t.received[i] = id
	return true
}

func (t *Tally) Complete() bool { return len(t.received) == t.count }

func (t *Tally) Len() int { return len(t.received) }

// IDs of the accepted deliveries, in body-index order.
func (t *Tally) IDs() []string {
	ids := []string{}
	for i := 0; i < t.count; i++ {
		if id, ok := t.received[i]; ok {
			ids = append(ids, id)
		}
	}
	return ids
}

// Report fills the fields every consumer mode shares.
func (t *Tally) Report(r map[string]any) {
	missing := []int{}
	for i := 0; i < t.count; i++ {
		if _, ok := t.received[i]; !ok {
			missing = append(missing, i)
		}
	}
	r["received"] = len(t.received)
	r["duplicates"] = t.duplicates
	r["unexpected"] = t.unexpected
	r["missing"] = missing
	r["ids"] = t.IDs()
	r["attempts"] = t.attempts
}

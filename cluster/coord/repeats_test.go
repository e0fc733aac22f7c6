package coord

import (
	"testing"
	"time"
)

func TestRepeatsQuiet(t *testing.T) {
	var r repeats
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		key, text string
		at        time.Duration
		want      bool
	}{
		{"scan", "host down", 0, false},                       // first
		{"scan", "host down", time.Second, true},              // unchanged repeat
		{"slot/1", "epoch 2", time.Second, false},             // another key
		{"scan", "host down", 59 * time.Second, true},         // still within the minute of the last shown
		{"scan", "host unreachable", 60 * time.Second, false}, // changed
		{"scan", "host unreachable", 61 * time.Second, true},
		{"scan", "host unreachable", 121 * time.Second, false}, // a minute on: shown again
		{"slot/1", "epoch 3", 122 * time.Second, false},
	} {
		if got := r.quiet(tc.key, tc.text, t0.Add(tc.at)); got != tc.want {
			t.Errorf("%s %q at %v: quiet %v, want %v", tc.key, tc.text, tc.at, got, tc.want)
		}
	}
}

// Package summarytest checks a benchmark summarizer in tests: the table
// rows it prints, or the error it fails with.
package summarytest

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// Check runs summarize on in. With wantErr set, the run must fail with an
// error containing it; otherwise it must succeed and its output hold each
// of want. Check returns the output.
func Check(t testing.TB, summarize func(io.Reader, io.Writer) error, in string, want []string, wantErr string) string {
	t.Helper()
	var out bytes.Buffer
	err := summarize(strings.NewReader(in), &out)
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("err = %v, want %q", err, wantErr)
		}
		return out.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		if !strings.Contains(out.String(), w) {
			t.Errorf("output lacks %q:\n%s", w, out.String())
		}
	}
	return out.String()
}

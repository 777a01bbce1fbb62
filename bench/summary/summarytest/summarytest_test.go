package summarytest

import (
	"errors"
	"fmt"
	"io"
	"testing"
)

// fakeT records failures instead of ending the test; Fatal panics with
// it so Check stops there, as it would in a real test.
type fakeT struct {
	testing.TB
	errors []string
	fatal  string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Errorf(format string, args ...any) {
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}
func (f *fakeT) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }
func (f *fakeT) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	panic(f)
}

func run(ft *fakeT, summarize func(io.Reader, io.Writer) error, want []string, wantErr string) (out string) {
	defer func() {
		if r := recover(); r != nil && r != ft {
			panic(r)
		}
	}()
	return Check(ft, summarize, "in", want, wantErr)
}

func TestCheck(t *testing.T) {
	echo := func(r io.Reader, w io.Writer) error {
		_, err := io.Copy(w, r)
		fmt.Fprint(w, "| row |")
		return err
	}
	fail := func(io.Reader, io.Writer) error { return errors.New("summarize: no results") }
	tests := []struct {
		name       string
		summarize  func(io.Reader, io.Writer) error
		want       []string
		wantErr    string
		wantErrors int
		wantFatal  bool
		wantOut    string
	}{
		{"rows present", echo, []string{"in", "| row |"}, "", 0, false, "in| row |"},
		{"row missing", echo, []string{"| row |", "| other |", "| third |"}, "", 2, false, "in| row |"},
		{"expected error", fail, nil, "no results", 0, false, ""},
		{"other error", fail, nil, "line 1", 0, true, ""},
		{"error expected, none", echo, nil, "no results", 0, true, ""},
		{"unexpected error", fail, []string{"| row |"}, "", 0, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ft := &fakeT{TB: t}
			out := run(ft, tt.summarize, tt.want, tt.wantErr)
			if len(ft.errors) != tt.wantErrors {
				t.Errorf("%d errors %q, want %d", len(ft.errors), ft.errors, tt.wantErrors)
			}
			if (ft.fatal != "") != tt.wantFatal {
				t.Errorf("fatal %q, want fatal: %v", ft.fatal, tt.wantFatal)
			}
			if !tt.wantFatal && out != tt.wantOut {
				t.Errorf("returned %q, want %q", out, tt.wantOut)
			}
		})
	}
}

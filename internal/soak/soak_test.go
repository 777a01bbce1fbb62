package soak

import (
	"testing"
	"time"
)

func TestScale(t *testing.T) {
	t.Setenv("OUTPOST_SOAK", "")
	if Enabled() || N(5, 50) != 5 || D(time.Second, time.Minute) != time.Second {
		t.Fatal("fast sizes expected without OUTPOST_SOAK")
	}
	t.Setenv("OUTPOST_SOAK", "1")
	if !Enabled() || N(5, 50) != 50 || D(time.Second, time.Minute) != time.Minute {
		t.Fatal("long sizes expected with OUTPOST_SOAK=1")
	}
}

//go:build race

package outposttest

func init() { raceEnabled = true }

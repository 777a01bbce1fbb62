package identity

import (
	"strings"

	"outpost/internal/status"
)

// MaxIDLength is Azure's limit on device and module ids.
const MaxIDLength = 128

// idChar reports whether c may appear in a device or module id: ASCII
// letters, digits and - . % _ * ? ! ( ) , : = @ $ '. IoT Hub also allows
// '+' and '#'; they are MQTT wildcards, so a device named with them could
// not publish on its own topics, and they are refused here.
func idChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-.%_*?!(),:=@$'", c) >= 0
}

func validateID(kind, id string) error {
	if id == "" {
		return status.BadRequest(status.CodeArgumentInvalid, "%s id is empty", kind)
	}
	if len(id) > MaxIDLength {
		return status.BadRequest(status.CodeArgumentInvalid, "%s id is %d characters: the limit is %d", kind, len(id), MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		if !idChar(id[i]) {
			return status.BadRequest(status.CodeArgumentInvalid,
				"%s id %q: character %q is not allowed (letters, digits and - . %% _ * ? ! ( ) , : = @ $ ' only)",
				kind, id, rune(id[i]))
		}
	}
	// "." and ".." are dot-segments: clients and proxies remove them
	// from URL paths (RFC 3986 5.2.4), so such an id, which could be
	// created as %2e%2e, could not be addressed afterwards.
	if id == "." || id == ".." {
		return status.BadRequest(status.CodeArgumentInvalid, "%s id %q is a URL dot-segment, which cannot be addressed in a URL path", kind, id)
	}
	return nil
}

// ValidateDeviceID checks a device id against Azure's rules: 1 to 128
// characters, case-sensitive, ASCII letters, digits and
// - . % _ * ? ! ( ) , : = @ $ ', and neither "." nor "..".
func ValidateDeviceID(id string) error { return validateID("device", id) }

// ValidateModuleID checks a module id: the device id rules, and a leading
// '$' only for the IoT Edge system modules ($edgeAgent, $edgeHub), which
// is what makes it safe to look those up by id. PrepareNewModule further
// refuses the system ids, so users cannot create them.
func ValidateModuleID(id string) error {
	if err := validateID("module", id); err != nil {
		return err
	}
	if strings.HasPrefix(id, "$") && !IsSystemModule(id) {
		return status.BadRequest(status.CodeArgumentInvalid,
			"module id %q: ids starting with '$' are reserved for IoT Edge system modules", id)
	}
	return nil
}

// IsSystemModule reports whether id is one of the IoT Edge runtime's
// modules.
func IsSystemModule(id string) bool { return id == EdgeAgent || id == EdgeHub }

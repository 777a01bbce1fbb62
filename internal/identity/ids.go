package identity

import "strings"

// MaxIDLength is Azure's limit on device and module ids.
const MaxIDLength = 128

// idChar reports whether c may appear in a device or module id: ASCII
// letters, digits and - . % _ * ? ! ( ) , : = @ $ '.
func idChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-.%_*?!(),:=@$'", c) >= 0
}

func validateID(kind, id string) error {
	if id == "" {
		return BadRequest(CodeArgumentInvalid, "%s id is empty", kind)
	}
	if len(id) > MaxIDLength {
		return BadRequest(CodeArgumentInvalid, "%s id is %d characters: the limit is %d", kind, len(id), MaxIDLength)
	}
	// Made of allowed characters, but a URL path cannot name them: HTTP
	// clients and servers take them for the current and parent segment.
	if id == "." || id == ".." {
		return BadRequest(CodeArgumentInvalid, "%s id %q is a relative path segment, which a URL cannot name", kind, id)
	}
	for i := 0; i < len(id); i++ {
		if !idChar(id[i]) {
			return BadRequest(CodeArgumentInvalid,
				"%s id %q: character %q is not allowed (letters, digits and - . %% _ * ? ! ( ) , : = @ $ ' only)",
				kind, id, rune(id[i]))
		}
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
		return BadRequest(CodeArgumentInvalid,
			"module id %q: ids starting with '$' are reserved for IoT Edge system modules", id)
	}
	return nil
}

// IsSystemModule reports whether id is one of the IoT Edge runtime's
// modules.
func IsSystemModule(id string) bool { return id == EdgeAgent || id == EdgeHub }

//go:build !unix

package store

// isIOError is false where the errors of a full or failing disk are not
// told apart.
func isIOError(error) bool { return false }

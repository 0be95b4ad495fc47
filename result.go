package raftkit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"reflect"

	"github.com/hashicorp/go-msgpack/v2/codec"

	"github.com/raftkit/raftkit/internal/peer"
)

// Results and FSM errors leave the leader in one form, whether the caller
// is on the leader or on a follower that forwarded the command:
//
//   - a result of a type registered in Config.ResultTypes travels as
//     itself (msgpack-encoded, decoded into the same type);
//   - any other result is normalised as msgpack carries it: integers become
//     int64 (uint64 above its range), floats float64, structs and maps
//     map[string]any, slices []any, an empty []byte nil;
//   - an FSM error that is a value registered in Config.FSMErrors, or of a
//     registered type, travels as itself; any other FSM error becomes an
//     *FSMError with its text, matching the registered values and types it
//     matched on the leader.
//
// The leader applies the same rules to its own callers, so Apply's answer
// does not depend on the node it was called on.

// codecs holds a node's registered result types and FSM errors.
type codecs struct {
	results    map[reflect.Type]string // type -> key
	resultKeys map[string]reflect.Type

	sentinels   []error // registered values, in Config order
	sentinelKey map[error]string
	byKey       map[string]error

	errTypes   []reflect.Type // registered pointer types, in Config order
	errTypeKey map[reflect.Type]string
	errByKey   map[string]reflect.Type
}

// typeKey names a type the same way on every node built from the same code.
func typeKey(t reflect.Type) string {
	prefix := ""
	for t.Kind() == reflect.Pointer {
		prefix += "*"
		t = t.Elem()
	}
	if t.PkgPath() == "" {
		return prefix + t.String()
	}
	return prefix + t.PkgPath() + "." + t.Name()
}

// newCodecs checks and indexes Config.ResultTypes and Config.FSMErrors.
func newCodecs(resultTypes []any, fsmErrors []error) (*codecs, error) {
	c := &codecs{
		results: map[reflect.Type]string{}, resultKeys: map[string]reflect.Type{},
		sentinelKey: map[error]string{}, byKey: map[string]error{},
		errTypeKey: map[reflect.Type]string{}, errByKey: map[string]reflect.Type{},
	}
	for i, v := range resultTypes {
		field := fmt.Sprintf("ResultTypes[%d]", i)
		if v == nil {
			return nil, configErr(field, "nil", "must be a value of the result type, such as MyResult{} or (*MyResult)(nil)")
		}
		t := reflect.TypeOf(v)
		switch t.Kind() {
		case reflect.Func, reflect.Chan, reflect.UnsafePointer, reflect.Interface:
			return nil, configErr(field, t.String(), "cannot be encoded")
		}
		k := typeKey(t)
		if _, dup := c.resultKeys[k]; dup {
			return nil, configErr(field, t.String(), "is listed twice")
		}
		c.results[t], c.resultKeys[k] = k, t
	}
	for i, e := range fsmErrors {
		field := fmt.Sprintf("FSMErrors[%d]", i)
		if e == nil {
			return nil, configErr(field, "nil", "must be an error value, or a typed nil pointer such as (*MyError)(nil) for an error type")
		}
		v := reflect.ValueOf(e)
		if v.Kind() == reflect.Pointer && v.IsNil() {
			if v.Type().Elem().Kind() != reflect.Struct {
				return nil, configErr(field, v.Type().String(), "an error type must be a pointer to a struct")
			}
			k := typeKey(v.Type())
			if _, dup := c.errByKey[k]; dup {
				return nil, configErr(field, v.Type().String(), "is listed twice")
			}
			c.errTypes = append(c.errTypes, v.Type())
			c.errTypeKey[v.Type()], c.errByKey[k] = k, v.Type()
			continue
		}
		if !v.Type().Comparable() {
			return nil, configErr(field, e.Error(), "an error value must be comparable (errors.New gives one)")
		}
		k := typeKey(v.Type()) + ":" + e.Error()
		if _, dup := c.byKey[k]; dup {
			return nil, configErr(field, e.Error(), "is listed twice, or two values share this text")
		}
		c.sentinels = append(c.sentinels, e)
		c.sentinelKey[e], c.byKey[k] = k, e
	}
	return c, nil
}

// msgpackHandle is the wire's handle; results are normalised with it.
var msgpackHandle = peer.Handle()

// normalise returns res as a caller on another node would receive it.
// Common types are converted directly, the rest through msgpack.
func (c *codecs) normalise(res any) (any, error) {
	switch v := res.(type) {
	case nil, bool, string, int64, float64:
		return v, nil
	case []byte:
		if len(v) == 0 {
			return nil, nil
		}
		return v, nil
	case int:
		return int64(v), nil
	case int32:
		return int64(v), nil
	case uint64:
		if v > math.MaxInt64 {
			return v, nil
		}
		return int64(v), nil
	case uint32:
		return int64(v), nil
	case uint:
		if uint64(v) > math.MaxInt64 {
			return uint64(v), nil
		}
		return int64(v), nil
	}
	if _, ok := c.results[reflect.TypeOf(res)]; ok {
		return res, nil
	}
	var b []byte
	if err := codec.NewEncoderBytes(&b, msgpackHandle).Encode(res); err != nil {
		return nil, fmt.Errorf("encode the FSM's result of type %T: %w", res, err)
	}
	var out any
	if err := codec.NewDecoderBytes(b, msgpackHandle).Decode(&out); err != nil {
		return nil, fmt.Errorf("decode the FSM's result of type %T: %w", res, err)
	}
	return out, nil
}

// encodeResult puts res into resp as a forwarded caller will decode it.
func (c *codecs) encodeResult(res any, resp *peer.ApplyResponse) error {
	if res == nil {
		return nil
	}
	if u, ok := res.(uint64); ok && u > math.MaxInt64 {
		// msgpack's signed decoding would wrap it.
		resp.ResultType, resp.ResultData = bigUint64Key, binary.BigEndian.AppendUint64(nil, u)
		return nil
	}
	if k, ok := c.results[reflect.TypeOf(res)]; ok {
		var b []byte
		if err := codec.NewEncoderBytes(&b, msgpackHandle).Encode(res); err != nil {
			return fmt.Errorf("encode the FSM's result of type %T: %w", res, err)
		}
		resp.ResultType, resp.ResultData = k, b
		return nil
	}
	resp.Result = res
	return nil
}

// bigUint64Key marks a uint64 result above int64's range.
const bigUint64Key = "raftkit:uint64"

// decodeResult returns the result that resp carries.
func (c *codecs) decodeResult(resp *peer.ApplyResponse) (any, error) {
	if resp.ResultType == "" {
		if b, ok := resp.Result.([]byte); ok && len(b) == 0 {
			return nil, nil
		}
		return resp.Result, nil
	}
	if resp.ResultType == bigUint64Key && len(resp.ResultData) == 8 {
		return binary.BigEndian.Uint64(resp.ResultData), nil
	}
	t, ok := c.resultKeys[resp.ResultType]
	if !ok {
		return nil, fmt.Errorf("the leader's result has type %s, which this node's Config.ResultTypes lacks", resp.ResultType)
	}
	v := reflect.New(t)
	if err := codec.NewDecoderBytes(resp.ResultData, msgpackHandle).Decode(v.Interface()); err != nil {
		return nil, fmt.Errorf("decode the leader's result of type %s: %w", resp.ResultType, err)
	}
	return v.Elem().Interface(), nil
}

// fsmError returns the FSM's error as callers on any node receive it.
func (c *codecs) fsmError(err error) error {
	if k, ok := c.exactKey(err); ok && k != "" {
		return err
	}
	fe := &FSMError{Message: err.Error()}
	for _, s := range c.sentinels {
		if errors.Is(err, s) {
			fe.matches = append(fe.matches, s)
		}
	}
	for _, t := range c.errTypes {
		target := reflect.New(t)
		if errors.As(err, target.Interface()) {
			fe.matches = append(fe.matches, target.Elem().Interface().(error))
		}
	}
	return fe
}

// exactKey returns the key of err if it is itself a registered value or of
// a registered type.
func (c *codecs) exactKey(err error) (string, bool) {
	if reflect.TypeOf(err).Comparable() {
		if k, ok := c.sentinelKey[err]; ok {
			return "v:" + k, true
		}
	}
	if k, ok := c.errTypeKey[reflect.TypeOf(err)]; ok {
		return "t:" + k, true
	}
	return "", false
}

// encodeFSMError puts the FSM's error into its wire form.
func (c *codecs) encodeFSMError(err error) *peer.Error {
	we := &peer.Error{Kind: peer.KindFSM, Message: err.Error()}
	if k, ok := c.exactKey(err); ok {
		we.Exact = k
		if k[0] == 't' {
			if b, ok := c.encodeTyped(err); ok {
				we.Typed = append(we.Typed, b)
			}
		}
		return we
	}
	for _, s := range c.sentinels {
		if errors.Is(err, s) {
			we.Matches = append(we.Matches, c.sentinelKey[s])
		}
	}
	for _, t := range c.errTypes {
		target := reflect.New(t)
		if errors.As(err, target.Interface()) {
			if b, ok := c.encodeTyped(target.Elem().Interface().(error)); ok {
				we.Typed = append(we.Typed, b)
			}
		}
	}
	return we
}

func (c *codecs) encodeTyped(err error) (peer.TypedValue, bool) {
	var b []byte
	if codec.NewEncoderBytes(&b, msgpackHandle).Encode(err) != nil {
		return peer.TypedValue{}, false
	}
	return peer.TypedValue{Type: c.errTypeKey[reflect.TypeOf(err)], Data: b}, true
}

func (c *codecs) decodeTyped(tv peer.TypedValue) (error, bool) {
	t, ok := c.errByKey[tv.Type]
	if !ok {
		return nil, false
	}
	v := reflect.New(t.Elem())
	if codec.NewDecoderBytes(tv.Data, msgpackHandle).Decode(v.Interface()) != nil {
		return nil, false
	}
	e, ok := v.Interface().(error)
	return e, ok
}

// decodeFSMError rebuilds the FSM's error from its wire form, as
// fsmError gives it on the leader. Registered errors this node lacks are
// left out.
func (c *codecs) decodeFSMError(we *peer.Error) error {
	switch {
	case len(we.Exact) > 2 && we.Exact[0] == 'v':
		if s, ok := c.byKey[we.Exact[2:]]; ok {
			return s
		}
	case len(we.Exact) > 2 && we.Exact[0] == 't' && len(we.Typed) == 1:
		if e, ok := c.decodeTyped(we.Typed[0]); ok {
			return e
		}
	}
	fe := &FSMError{Message: we.Message}
	for _, k := range we.Matches {
		if s, ok := c.byKey[k]; ok {
			fe.matches = append(fe.matches, s)
		}
	}
	for _, tv := range we.Typed {
		if e, ok := c.decodeTyped(tv); ok {
			fe.matches = append(fe.matches, e)
		}
	}
	return fe
}

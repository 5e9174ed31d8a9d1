// Package pb holds the Go code generated from the protocol's .proto files.
//
// Code generated from device.proto by protoc-gen-go; DO NOT EDIT the
// *.pb.go files. Regenerate them with `make proto`, which installs the pinned
// protoc-gen-go and uses Debian's protoc. The generated code is committed so
// that building the project needs no protoc.
package pb

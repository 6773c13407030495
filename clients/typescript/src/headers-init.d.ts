// @connectrpc/connect's types name the fetch API's global HeadersInit, which
// lib.dom declares but @types/node does not: declare the same type here
// instead of pulling all of lib.dom into a Node-only package.
type HeadersInit = import("undici-types").HeadersInit;

/**
 * The contract both runtimes share: which services exist, what each method requires, who may
 * call it, and how it is reached over REST. Transport-free (only @bufbuild/protobuf and gen/),
 * so the Node services and the Deno gateway import the same decisions.
 */
export * from "./access.ts";
export * from "./http-rules.ts";
export * from "./redaction.ts";
export * from "./roles.ts";
export * from "./services.ts";

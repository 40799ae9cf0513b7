/**
 * An edge refusal of a Connect or gRPC-Web call (401, 403, 429, 413, 400 for a body that does not
 * parse) in the protocol the client speaks, so a generated client reads the code and message as
 * if the service had answered: Connect unary as its error JSON with the Connect status mapping,
 * Connect streaming as an end-stream message, gRPC-Web as a trailers-only response.
 */
import { fromBinary, type DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { encodeEnvelope } from "@connectrpc/connect/protocol";
import { codeToHttpStatus, endStreamFlag, endStreamToJson, errorToJson } from "@connectrpc/connect/protocol-connect";

export function protocolErrorResponse(req: Request, error: ConnectError): Response {
  const contentType = (req.headers.get("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
  if (contentType.startsWith("application/grpc-web")) {
    return new Response(null, {
      status: 200,
      headers: { "content-type": contentType, "grpc-status": String(error.code), "grpc-message": encodeURIComponent(error.rawMessage) },
    });
  }
  if (contentType.startsWith("application/connect+")) {
    const endStream = new TextEncoder().encode(JSON.stringify(endStreamToJson(new Headers(), error, undefined)));
    return new Response(encodeEnvelope(endStreamFlag, endStream), { status: 200, headers: { "content-type": contentType } });
  }
  return new Response(JSON.stringify(errorToJson(error, undefined)), {
    status: codeToHttpStatus(error.code),
    headers: { "content-type": "application/json" },
  });
}

/**
 * True for an uncompressed Connect unary call in the binary format: its body is one protobuf
 * message as it is. A compressed body (Content-Encoding gzip, br) passes through unread.
 */
export function isConnectUnaryBinary(req: Request, method: DescMethod): boolean {
  const encoding = (req.headers.get("content-encoding") ?? "identity").trim().toLowerCase();
  return method.methodKind === "unary" && encoding === "identity" && /^application\/proto\s*(;|$)/i.test(req.headers.get("content-type") ?? "");
}

/**
 * Checks that a Connect unary binary body parses as the method's request, and hands back the
 * bytes to forward. The services' Connect runtime answers INTERNAL to a body that does not parse
 * (connect-es reports any binary parse failure so, client or server side); at the edge it is the
 * client's mistake, INVALID_ARGUMENT.
 */
export function checkedUnaryBody(method: DescMethod, body: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> {
  try {
    fromBinary(method.input, body);
  } catch (error) {
    throw new ConnectError(`the request body is not a valid ${method.input.typeName}: ${error instanceof Error ? error.message : String(error)}`, Code.InvalidArgument);
  }
  return body;
}

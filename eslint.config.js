// Lint keeps the layers (STYLE.md habit 12): transport stays out of domain code, binaries stay
// out of libraries, and a promise is never dropped silently.
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["gen/**", "node_modules/**", ".jobmesh/**", ".tap/**", "cmd/gateway/**", "internal/**/*_test.ts", "bench/gateway-floor-proxy.ts"] },
  {
    // tap's top-level t.test() promises are awaited by tap itself.
    files: ["cmd/**/*.ts", "internal/**/*.ts", "scripts/**/*.ts", "bench/**/*.ts"],
    extends: [tseslint.configs.base],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": ["error", { checksVoidReturn: false }],
    },
  },
  {
    // Domain code: no Connect. Only internal/rpc, the service handlers and the edge gateway
    // (internal/gateway: a transport itself, translating REST to Connect) speak the transport.
    files: ["internal/**/*.ts"],
    ignores: ["internal/rpc/**", "internal/**/service.ts", "internal/mesh/**", "internal/gateway/**"],
    rules: {
      "no-restricted-imports": ["error", {
        paths: [{ name: "@connectrpc/connect", message: "domain code throws named errors; only internal/rpc and service.ts import Connect" }],
        patterns: [{ group: ["**/cmd/**"], message: "internal/ must not import binaries" }],
      }],
    },
  },
  {
    files: ["internal/**/*.ts"],
    ignores: ["internal/config/**"],
    rules: {
      "no-restricted-properties": ["error", { object: "process", property: "env", message: "read configuration in internal/config only" }],
    },
  },
);

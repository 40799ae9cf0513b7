/**
 * Password hashing with Argon2id at OWASP's recommended minimum (19 MiB memory, 2 iterations,
 * parallelism 1). A login for an unknown email verifies against a hash made the same way, so a
 * wrong email and a wrong password cost the same time.
 */
import { hash, verify, type Algorithm } from "@node-rs/argon2";
import { randomBytes } from "node:crypto";

// Algorithm is a const enum, which erasable TypeScript cannot read: 2 is Argon2id.
const argon2id = 2 as Algorithm;
const options = { algorithm: argon2id, memoryCost: 19_456, timeCost: 2, parallelism: 1 };

export function hashPassword(password: string): Promise<string> {
  return hash(password, options);
}

export interface PasswordChecker {
  /** True when `password` matches `stored`; with `stored` undefined it spends the same time and says false. */
  check(stored: string | undefined, password: string): Promise<boolean>;
}

export async function createPasswordChecker(): Promise<PasswordChecker> {
  const decoy = await hashPassword(randomBytes(24).toString("base64url"));
  return {
    async check(stored, password) {
      const matches = await verify(stored ?? decoy, password).catch(() => false);
      return stored !== undefined && matches;
    },
  };
}

/** A password for the generated admin: 24 characters, 144 bits. */
export function generatePassword(): string {
  return randomBytes(18).toString("base64url");
}

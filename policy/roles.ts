// Claims -> roles. Pure, total over any JSON payload: a claim of the wrong type grants nothing and
// never throws (tokens are attacker-shaped input even after their signature checks out).

import type { RoleMapping } from "./schema.ts";

export type Claims = Readonly<Record<string, unknown>>;

/**
 * Reads a claim by name: the full name first (so URL-named claims such as
 * `https://example.com/roles` and names containing dots work), then as a dotted path into objects.
 */
export function readClaim(claims: Claims, name: string): unknown {
  if (Object.hasOwn(claims, name)) return claims[name];
  if (!name.includes(".")) return undefined;
  let current: unknown = claims;
  for (const part of name.split(".")) {
    if (typeof current !== "object" || current === null || Array.isArray(current)) return undefined;
    if (!Object.hasOwn(current, part)) return undefined;
    current = (current as Record<string, unknown>)[part];
  }
  return current;
}

/** A space-delimited string (OAuth `scope`) or an array of strings; anything else has no values. */
export function claimValues(value: unknown): string[] {
  if (typeof value === "string") return value.split(" ").filter((v) => v !== "");
  if (Array.isArray(value)) return value.filter((v): v is string => typeof v === "string");
  return [];
}

export type RoleMapper = (claims: Claims, issuer: string) => string[];

/** Precomputes per-mapping lookup tables; the returned function yields sorted, unique roles. */
export function compileRoleMappings(mappings: readonly RoleMapping[]): RoleMapper {
  const compiled = mappings.map((m) => ({
    claim: m.claim,
    issuer: m.issuer,
    // A Map, not the plain object: claim values such as "__proto__" or "constructor" must not hit prototypes.
    grants: new Map(Object.entries(m.map)),
  }));
  return (claims, issuer) => {
    const roles = new Set<string>();
    for (const mapping of compiled) {
      if (mapping.issuer !== undefined && mapping.issuer !== issuer) continue;
      for (const value of claimValues(readClaim(claims, mapping.claim))) {
        const granted = mapping.grants.get(value);
        if (granted) for (const role of granted) roles.add(role);
      }
    }
    return [...roles].sort();
  };
}

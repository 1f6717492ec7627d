// A token's claims -> the identity the proxy admits and hands the app: subject, client, scopes and the
// roles the policy maps them to. Pure: the proxy calls it on verified payloads (decision.ts needs only
// the roles, and asks the policy's role mapping for them).

import { type Claims, claimValues, type RoleMapper } from "./roles.ts";

export interface Identity {
  issuer: string;
  subject?: string;
  clientId?: string;
  scopes: readonly string[];
  roles: readonly string[];
  claims: Readonly<Record<string, unknown>>;
  /** Epoch seconds. */
  expiresAt: number;
}

/** Frozen: a verified identity is shared by every request that presents the same token. */
export function identityFromClaims(
  claims: Claims,
  issuer: string,
  expiresAt: number,
  rolesFor: RoleMapper,
): Identity {
  const frozen = Object.freeze(claims);
  const subject = typeof frozen.sub === "string" ? frozen.sub : undefined;
  const clientId = firstString(frozen.client_id, frozen.azp, frozen.cid);
  const scopes = Object.freeze(
    typeof frozen.scope === "string" ? claimValues(frozen.scope) : claimValues(frozen.scp),
  );
  const roles = Object.freeze(rolesFor(frozen, issuer));
  const identity: Identity = { issuer, scopes, roles, claims: frozen, expiresAt };
  if (subject !== undefined) identity.subject = subject;
  if (clientId !== undefined) identity.clientId = clientId;
  return Object.freeze(identity);
}

function firstString(...values: unknown[]): string | undefined {
  for (const value of values) if (typeof value === "string" && value !== "") return value;
  return undefined;
}

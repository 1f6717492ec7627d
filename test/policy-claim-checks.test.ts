// policy/claim-checks.ts, pure: the reason codes the proxy logs, in its order, with the clock skew,
// and only audience and sub when no clock is given (a claims file describes no point in time).
import { describe, expect, it } from "vitest";
import { checkClaims } from "../policy/claim-checks.ts";

const issuer = { audiences: ["api://orders"], clockSkewSeconds: 30, maxTokenAgeSeconds: 600 };
const now = 2_000_000_000;
const good = { aud: "api://orders", sub: "alice", iat: now - 10, exp: now + 300 };
const reason = (claims: Record<string, unknown>, at: number | "no clock" = now) => {
  const checked = checkClaims(claims, issuer, at === "no clock" ? undefined : at);
  return checked.ok ? "ok" : checked.reason;
};

describe("checkClaims", () => {
  it("accepts a good token and caps its life at iat + maxTokenAgeSeconds", () => {
    expect(checkClaims(good, issuer, now)).toEqual({
      ok: true,
      dates: { exp: now + 300, expiresAt: now + 300 },
    });
    const longLived = { ...good, exp: now + 3600 };
    expect(checkClaims(longLived, issuer, now)).toEqual({
      ok: true,
      dates: { exp: now + 3600, expiresAt: now - 10 + 600 },
    });
  });

  it("gives the proxy's reason for each refusal, with the skew", () => {
    expect(reason({ ...good, aud: ["api://other", 7] })).toBe("bad_audience");
    expect(reason({ ...good, sub: "" })).toBe("missing_sub");
    expect(reason({ ...good, exp: undefined })).toBe("missing_exp");
    expect(reason({ ...good, exp: now - 30 })).toBe("expired");
    expect(reason({ ...good, exp: now - 29 })).toBe("ok");
    expect(reason({ ...good, nbf: now + 31 })).toBe("not_yet_valid");
    expect(reason({ ...good, nbf: now + 30 })).toBe("ok");
    expect(reason({ ...good, exp: now + 0.5 })).toBe("bad_numeric_date");
    expect(reason({ ...good, iat: "yesterday" })).toBe("bad_numeric_date");
    expect(reason({ ...good, iat: now + 31 })).toBe("issued_in_future");
    expect(reason({ ...good, iat: undefined })).toBe("missing_iat");
    expect(reason({ ...good, iat: now - 630 })).toBe("too_old");
    expect(reason({ ...good, iat: now - 629 })).toBe("ok");
  });

  it("refuses an expired token before its audience, as the proxy does before the signature", () => {
    expect(reason({ ...good, aud: "api://other", exp: now - 100 })).toBe("expired");
  });

  it("checks only audience and sub without a clock", () => {
    expect(reason({ aud: "api://orders", sub: "alice" }, "no clock")).toBe("ok");
    expect(reason({ aud: "api://orders", sub: "alice", exp: 1 }, "no clock")).toBe("ok");
    expect(reason({ aud: "api://orders" }, "no clock")).toBe("missing_sub");
    expect(reason({ sub: "alice" }, "no clock")).toBe("bad_audience");
  });
});

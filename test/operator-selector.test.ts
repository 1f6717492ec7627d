// Label selector semantics (the set-based rules of the Kubernetes API), with an empty selector
// selecting nothing.

import { describe, expect, it } from "vitest";
import { isEmptySelector, matchesSelector, matchesServiceSelector } from "../operator/selector.ts";

const labels = { app: "orders-api", tier: "backend", track: "stable" };

describe("matchesSelector", () => {
  it("matches nothing with an empty or absent selector", () => {
    expect(matchesSelector({}, labels)).toBe(false);
    expect(matchesSelector({ matchLabels: {}, matchExpressions: [] }, labels)).toBe(false);
    expect(matchesSelector(undefined, labels)).toBe(false);
    expect(isEmptySelector({ matchLabels: {} })).toBe(true);
  });

  it("requires every matchLabels entry, exactly", () => {
    expect(matchesSelector({ matchLabels: { app: "orders-api" } }, labels)).toBe(true);
    expect(matchesSelector({ matchLabels: { app: "orders-api", tier: "backend" } }, labels)).toBe(true);
    expect(matchesSelector({ matchLabels: { app: "orders-api", tier: "frontend" } }, labels)).toBe(false);
    expect(matchesSelector({ matchLabels: { app: "Orders-Api" } }, labels)).toBe(false);
    expect(matchesSelector({ matchLabels: { missing: "" } }, labels)).toBe(false);
    expect(matchesSelector({ matchLabels: { app: "orders-api" } }, undefined)).toBe(false);
  });

  it("does not take inherited properties for labels", () => {
    expect(matchesSelector({ matchExpressions: [{ key: "constructor", operator: "Exists" }] }, labels)).toBe(
      false,
    );
    expect(matchesSelector({ matchLabels: { toString: "x" } }, {})).toBe(false);
  });

  it("In: the label is present with one of the values", () => {
    const sel = (values: string[]) => ({ matchExpressions: [{ key: "track", operator: "In", values }] });
    expect(matchesSelector(sel(["stable", "canary"]), labels)).toBe(true);
    expect(matchesSelector(sel(["canary"]), labels)).toBe(false);
    expect(matchesSelector(sel([]), labels)).toBe(false);
    expect(matchesSelector(sel(["stable"]), { app: "x" })).toBe(false);
  });

  it("NotIn: the label is absent or has none of the values", () => {
    const sel = { matchExpressions: [{ key: "track", operator: "NotIn", values: ["canary"] }] };
    expect(matchesSelector(sel, labels)).toBe(true);
    expect(matchesSelector(sel, { ...labels, track: "canary" })).toBe(false);
    expect(matchesSelector(sel, { app: "orders-api" })).toBe(true);
  });

  it("Exists and DoesNotExist look at the key only", () => {
    expect(matchesSelector({ matchExpressions: [{ key: "tier", operator: "Exists" }] }, labels)).toBe(true);
    expect(matchesSelector({ matchExpressions: [{ key: "tier", operator: "Exists" }] }, { tier: "" })).toBe(
      true,
    );
    expect(matchesSelector({ matchExpressions: [{ key: "zone", operator: "Exists" }] }, labels)).toBe(false);
    expect(matchesSelector({ matchExpressions: [{ key: "zone", operator: "DoesNotExist" }] }, labels)).toBe(
      true,
    );
    expect(matchesSelector({ matchExpressions: [{ key: "tier", operator: "DoesNotExist" }] }, labels)).toBe(
      false,
    );
  });

  it("ANDs matchLabels and every expression", () => {
    const sel = {
      matchLabels: { app: "orders-api" },
      matchExpressions: [
        { key: "tier", operator: "In", values: ["backend"] },
        { key: "track", operator: "NotIn", values: ["canary"] },
        { key: "legacy", operator: "DoesNotExist" },
      ],
    };
    expect(matchesSelector(sel, labels)).toBe(true);
    expect(matchesSelector(sel, { ...labels, legacy: "yes" })).toBe(false);
    expect(matchesSelector(sel, { ...labels, app: "billing" })).toBe(false);
  });

  it("selects nothing for an operator the API server would reject", () => {
    expect(
      matchesSelector({ matchExpressions: [{ key: "tier", operator: "Gt", values: ["1"] }] }, labels),
    ).toBe(false);
  });
});

describe("matchesServiceSelector", () => {
  it("is equality on every key; an empty selector selects no pods", () => {
    expect(matchesServiceSelector({ app: "orders-api" }, labels)).toBe(true);
    expect(matchesServiceSelector({ app: "orders-api", tier: "frontend" }, labels)).toBe(false);
    expect(matchesServiceSelector({}, labels)).toBe(false);
    expect(matchesServiceSelector(undefined, labels)).toBe(false);
  });
});

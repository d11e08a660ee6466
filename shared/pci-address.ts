// PCI addresses as people type them and as the wire carries them: the client library and
// iommufdctl accept `DDDD:BB:DD.F` or the short `BB:DD.F` (domain 0000, as lspci prints it
// without -D), in either case, and send the one canonical form the protocol takes
// (protocol/methods.ts PCI_ADDRESS_PATTERN: lowercase, with the domain).
//
// Invariants:
// - Pure. canonicalPciAddress returns a string that matches PCI_ADDRESS_PATTERN, or undefined;
//   it never guesses beyond the domain (device 00-1f, function 0-7, hex digits only).
import { PCI_ADDRESS_PATTERN } from '../protocol/methods.ts';

const TYPED = /^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([01][0-9a-f])\.([0-7])$/i;

/** The canonical form of a typed PCI address, or undefined when it is not one. */
export function canonicalPciAddress(text: string): string | undefined {
  const m = TYPED.exec(text);
  if (m === null) return undefined;
  const canonical = `${m[1] ?? '0000'}:${m[2] ?? ''}:${m[3] ?? ''}.${m[4] ?? ''}`.toLowerCase();
  return PCI_ADDRESS_PATTERN.test(canonical) ? canonical : undefined;
}

// Qualified Varlink names ("io.iommufd.Broker.Open") for every method and error in the
// registries (methods.ts, errors.ts), their TypeScript types, and which parameter of a call or
// reply is an fd reference.
//
// Invariants:
// - Built only from the registries: a method or error exists here iff it exists there.
// - Lookups use own properties only, so "toString" or "__proto__" are never a method or error.
// - Each method names at most one fd parameter per direction; a method has a call fd parameter
//   iff its maxFds > 0 (test/protocol/method-table.test.ts checks this against the schemas).
import type { z } from 'zod';
import {
  BROKER_INTERFACE, SERVICE_INTERFACE, brokerErrorParameters, serviceErrorParameters,
  type BrokerErrorName, type ServiceErrorName,
} from './errors.ts';
import { brokerMethods, serviceMethods, type BrokerMethod, type ServiceMethod } from './methods.ts';

export type QualifiedBrokerMethod = `${typeof BROKER_INTERFACE}.${BrokerMethod}`;
export type QualifiedServiceMethod = `${typeof SERVICE_INTERFACE}.${ServiceMethod}`;
export type QualifiedMethod = QualifiedBrokerMethod | QualifiedServiceMethod;

export type QualifiedBrokerError = `${typeof BROKER_INTERFACE}.${BrokerErrorName}`;
export type QualifiedServiceError = `${typeof SERVICE_INTERFACE}.${ServiceErrorName}`;
export type QualifiedErrorName = QualifiedBrokerError | QualifiedServiceError;

/** The parameters an error carries on the wire. */
export type ErrorParametersOf<Q extends QualifiedErrorName> =
  Q extends `${typeof BROKER_INTERFACE}.${infer N extends BrokerErrorName}` ? z.input<(typeof brokerErrorParameters)[N]>
    : Q extends `${typeof SERVICE_INTERFACE}.${infer N extends ServiceErrorName}` ? z.input<(typeof serviceErrorParameters)[N]>
      : never;

/** The registry entry of a qualified method. */
export type SpecOf<Q extends QualifiedMethod> =
  Q extends `${typeof BROKER_INTERFACE}.${infer M extends BrokerMethod}` ? (typeof brokerMethods)[M]
    : Q extends `${typeof SERVICE_INTERFACE}.${infer M extends ServiceMethod}` ? (typeof serviceMethods)[M]
      : never;
export type ParametersOf<Q extends QualifiedMethod> = z.infer<SpecOf<Q>['parameters']>;
export type ReplyOf<Q extends QualifiedMethod> = z.infer<SpecOf<Q>['reply']>;

export interface MethodSpec {
  readonly parameters: z.ZodType;
  readonly reply: z.ZodType;
  readonly maxFds: number;
}

/** The interfaces we serve, each with its methods. */
const interfaces: Readonly<Record<string, Readonly<Record<string, MethodSpec>>>> = {
  [BROKER_INTERFACE]: brokerMethods,
  [SERVICE_INTERFACE]: serviceMethods,
};

export const interfaceNames: readonly string[] = Object.keys(interfaces);

export type MethodLookup =
  | { found: true; qualified: QualifiedMethod; spec: MethodSpec }
  | { found: false; missing: 'interface'; interface: string }
  | { found: false; missing: 'method'; interface: string; method: string };

/** Splits "interface.Method" at its last dot and finds it; the caller has checked there is a dot. */
export function lookupMethod(qualified: string): MethodLookup {
  const dot = qualified.lastIndexOf('.');
  const interfaceName = qualified.slice(0, dot);
  const methodName = qualified.slice(dot + 1);
  if (!Object.hasOwn(interfaces, interfaceName)) return { found: false, missing: 'interface', interface: interfaceName };
  const methods = interfaces[interfaceName];
  const spec = methods !== undefined && Object.hasOwn(methods, methodName) ? methods[methodName] : undefined;
  if (spec === undefined) return { found: false, missing: 'method', interface: interfaceName, method: methodName };
  // The name was found in the registries, so it is one of the QualifiedMethod strings.
  return { found: true, qualified: qualified as QualifiedMethod, spec };
}

/** Every qualified method name, broker first. */
export const qualifiedMethodNames: readonly QualifiedMethod[] = [
  ...Object.keys(brokerMethods).map((m) => `${BROKER_INTERFACE}.${m}` as QualifiedBrokerMethod),
  ...Object.keys(serviceMethods).map((m) => `${SERVICE_INTERFACE}.${m}` as QualifiedServiceMethod),
];

/** The call parameter that holds an fd index, per method (absent: the method takes no fd). */
export const callFdParameter: Readonly<Partial<Record<QualifiedMethod, string>>> = {
  'io.iommufd.Broker.Open': 'targetPidFileDescriptor',
};

/** The reply parameter that holds an fd index, per method (absent: the reply carries no fd). */
export const replyFdParameter: Readonly<Partial<Record<QualifiedMethod, string>>> = {
  'io.iommufd.Broker.Open': 'fileDescriptor',
};

/**
 * The reply parameter that lists further fd references, per method: an array of objects each
 * with a `fileDescriptor` index (Open: `devices`, one VFIO device fd each).
 */
export const replyFdListParameter: Readonly<Partial<Record<QualifiedMethod, string>>> = {
  'io.iommufd.Broker.Open': 'devices',
};

export type ErrorLookup =
  | { found: true; kind: 'broker'; name: BrokerErrorName; schema: z.ZodType }
  | { found: true; kind: 'service'; name: ServiceErrorName; schema: z.ZodType }
  | { found: false };

/** Finds a qualified error name in the registries. */
export function lookupError(qualified: string): ErrorLookup {
  const dot = qualified.lastIndexOf('.');
  const interfaceName = qualified.slice(0, dot);
  const name = qualified.slice(dot + 1);
  if (dot > 0 && interfaceName === BROKER_INTERFACE && Object.hasOwn(brokerErrorParameters, name)) {
    const key = name as BrokerErrorName;
    return { found: true, kind: 'broker', name: key, schema: brokerErrorParameters[key] };
  }
  if (dot > 0 && interfaceName === SERVICE_INTERFACE && Object.hasOwn(serviceErrorParameters, name)) {
    const key = name as ServiceErrorName;
    return { found: true, kind: 'service', name: key, schema: serviceErrorParameters[key] };
  }
  return { found: false };
}

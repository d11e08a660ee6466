// From a decoded Varlink call to the service method, and back to reply parameters.
//
// Invariants:
// - Only calls that passed decodeCall arrive here: parameters are already validated.
// - The fds of an Open reply (the iommufd at index 0, then each VFIO device in the order asked)
//   are handed to the server (reply.fds), which sends them in one message; none is kept.
import type { DecodedCall } from '../../../protocol/decode.ts';
import { interfaceDescription, SERVICE_INFO } from '../../../protocol/interface.ts';
import { VarlinkServiceError } from '../../../protocol/errors.ts';
import type { BrokerService } from '../service.ts';
import type { ConnectionPeer } from '../peer.ts';
import type { HandlerReply } from './server.ts';

export function makeDispatcher(service: BrokerService): (call: DecodedCall, peer: ConnectionPeer) => Promise<HandlerReply> {
  return async (call, peer) => {
    switch (call.method) {
      case 'io.iommufd.Broker.Open': {
        const { lease, fd, devices } = await service.open(peer, call.parameters, call.targetPidFd);
        const listed = devices.map((d, i) => ({ address: d.address, fileDescriptor: i + 1 }));
        return {
          parameters: { lease, fileDescriptor: 0, ...(listed.length === 0 ? {} : { devices: listed }) },
          fds: [fd, ...devices.map((d) => d.fd)],
        };
      }
      case 'io.iommufd.Broker.Resize':
        return { parameters: await service.resize(peer, call.parameters) };
      case 'io.iommufd.Broker.Release':
        return { parameters: await service.release(peer, call.parameters) };
      case 'io.iommufd.Broker.List':
        return { parameters: service.list(peer, call.parameters) };
      case 'io.iommufd.Broker.Status':
        return { parameters: service.status() };
      case 'org.varlink.service.GetInfo':
        return { parameters: { ...SERVICE_INFO } };
      case 'org.varlink.service.GetInterfaceDescription': {
        const description = interfaceDescription(call.parameters.interface);
        if (description === undefined) {
          throw new VarlinkServiceError('org.varlink.service.InterfaceNotFound', { interface: call.parameters.interface });
        }
        return { parameters: { description } };
      }
    }
  };
}

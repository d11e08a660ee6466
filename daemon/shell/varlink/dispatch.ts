// From a decoded Varlink call to the service method, and back to reply parameters.
//
// Invariants:
// - Only calls that passed decodeCall arrive here: parameters are already validated.
// - The device fd of an Open reply is handed to the server (reply.fds) and never kept.
import type { DecodedCall } from '../../../protocol/decode.ts';
import { interfaceDescription, SERVICE_INFO } from '../../../protocol/interface.ts';
import { VarlinkServiceError } from '../../../protocol/errors.ts';
import type { BrokerService } from '../service.ts';
import type { ConnectionPeer } from '../peer.ts';
import type { HandlerReply } from './connection.ts';

export function makeDispatcher(service: BrokerService): (call: DecodedCall, peer: ConnectionPeer) => Promise<HandlerReply> {
  return async (call, peer) => {
    switch (call.method) {
      case 'io.iommufd.Broker.Open': {
        const { lease, fd } = await service.open(peer, call.parameters, call.targetPidFd);
        return { parameters: { lease, fileDescriptor: 0 }, fds: [fd] };
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

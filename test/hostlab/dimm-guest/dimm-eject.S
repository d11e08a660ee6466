/*
 * The inner QEMU's guest in the host lab's unplug check: a 64 KiB firmware image (-bios) that
 * does nothing but what a guest OS's ACPI _EJ0 method does for QEMU's DIMMs. It polls QEMU's
 * ACPI memory hotplug controller (I/O ports 0x0a00-0x0a17, the "MHPD" registers of
 * docs/specs/acpi_mem_hotplug.rst, on q35 as on pc) and, for every slot whose "remove event"
 * bit is set (QEMU sets it on device_del of a pc-dimm), writes the "eject" bit: QEMU then
 * unplugs the DIMM and emits DEVICE_DELETED. A slot is ejected only after device_del asked.
 *
 * Invariants:
 * - Real mode from the reset vector, no stack, no memory written, no interrupts (cli): the
 *   only effects are the port accesses below. Slots 0..SLOTS-1 are polled (the lab's QEMU has
 *   slots=2; writing the selector of a missing slot is ignored by QEMU).
 * - Between rounds it counts DELAY down in a register: no I/O, so under TCG the vCPU does not
 *   take QEMU's big lock (which QMP needs) for every iteration; a round is well under a
 *   second even under nested TCG. (It still spins: there is no timer or interrupt set up.)
 * - Built by test/hostlab/run with binutils (as --32, objcopy -O binary): exactly 65,536 bytes,
 *   the reset vector (offset 0xfff0, CS base 0xffff0000) jumping to offset 0.
 */
        .code16
        .set MHP_SELECT, 0x0a00         /* write: select the slot (32 bit) */
        .set MHP_STATUS, 0x0a14         /* read: bit 2 remove event; write: bit 3 eject */
        .set REMOVE_EVENT, 0x04
        .set EJECT, 0x08
        .set SLOTS, 8
        .set DELAY, 0x00400000
        .text
start:
        cli
round:
        xorl    %ecx, %ecx
slot:
        movw    $MHP_SELECT, %dx
        movl    %ecx, %eax
        outl    %eax, %dx
        movw    $MHP_STATUS, %dx
        inb     %dx, %al
        testb   $REMOVE_EVENT, %al
        jz      next
        movb    $EJECT, %al
        outb    %al, %dx
next:
        incl    %ecx
        cmpl    $SLOTS, %ecx
        jb      slot
        movl    $DELAY, %ebx
pause:
        decl    %ebx
        jnz     pause
        jmp     round

        .org    0xfff0
reset:
        jmp     start
        .org    0x10000

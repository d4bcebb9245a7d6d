# rpi-flash stage 1 (DESIGN §3.5): runs from the card's boot partition on every boot.
# Get an address, ask the lab's TFTP server for this board's job (<macdir>/flash.scr) and run it;
# without a job, boot the installed system named by the card's rpi-flash.env. uboot/README.md
# explains every step; build boot.scr from this file with `npm run build:uboot`.
#
# Written for Debian's stock Raspberry Pi U-Boot 2023.01: only its commands (the test checks them
# against test/fixtures/uboot-commands-rpi.txt), no `exit` (hush ignores it: failure paths are
# branches), and nothing is saved (`saveenv` never runs), so every boot starts from the same env.
echo "rpi-flash: stage 1"

# Where this script came from: distro boot sets devtype/devnum/distro_bootpart before `source`;
# anyone else gets the first partition of mmc 0 (the SD card on every Pi). Distro boot's are
# hush-local variables (`devnum=0; run mmc_boot`, `for distro_bootpart in …`), which `env exists`
# does not see: test their values.
if test -z "${devtype}"; then setenv devtype mmc; fi
if test -z "${devnum}"; then setenv devnum 0; fi
if test -z "${distro_bootpart}"; then setenv distro_bootpart 1; fi
setenv rpf_dev ${devnum}:${distro_bootpart}

# Defaults first, then the card's env file, which may override any of them. Keys of the file
# (all optional; `key=value` lines, `#` comments), written by make-card / the agent's inject step:
#   rpf_kernel, rpf_initrd, rpf_arm64 (1: booti, else bootz), rpf_bootargs — the installed system;
#   rpf_ipaddr, rpf_netmask, rpf_gatewayip — a static address instead of DHCP;
#   rpf_serverip — the TFTP server, instead of DHCP's next-server;
#   rpf_tftptimeout (ms, at least 1000), rpf_tftptimeoutcountmax — how long to wait for a server.
setenv rpf_kernel
setenv rpf_initrd
setenv rpf_arm64
setenv rpf_bootargs
setenv rpf_ipaddr
setenv rpf_serverip
setenv rpf_net
setenv rpf_job
setenv rpf_tftptimeout 1000
setenv rpf_tftptimeoutcountmax 2
# A board without a DHCP answer gives up after 11.8 s: the first retransmit past 10 s (U-Boot's
# default is 28 s, then retries).
setenv bootpretryperiod 10000
if fatload ${devtype} ${rpf_dev} ${kernel_addr_r} rpi-flash.env; then
	env import -t ${kernel_addr_r} ${filesize}
else
	echo "rpi-flash: no rpi-flash.env on ${devtype} ${rpf_dev}"
fi

# The address: static from the env file, else DHCP (`autoload no`: DHCP only, no download).
# The server: DHCP's next-server (siaddr) — U-Boot 2023.01 ignores option 66 — or rpf_serverip.
# A Pi 3's NIC is on USB: without `usb start` (the stock preboot) it has no ethaddr yet.
setenv autoload no
env exists ethaddr || usb start
if env exists rpf_ipaddr; then
	setenv ipaddr ${rpf_ipaddr}
	env exists rpf_netmask && setenv netmask ${rpf_netmask}
	env exists rpf_gatewayip && setenv gatewayip ${rpf_gatewayip}
	setenv rpf_net 1
else
	dhcp && setenv rpf_net 1
fi
env exists rpf_serverip && setenv serverip ${rpf_serverip}

# The job. Short TFTP timeouts: a board whose server is down must still boot within seconds.
# U-Boot keeps tftptimeout* in static variables (unsetting keeps the last value), so its own
# defaults (5000 ms, 10) are put back for stage 2 whatever happens.
if env exists rpf_net && env exists ethaddr && env exists serverip; then
	setexpr macdir gsub : - ${ethaddr}
	setenv tftptimeout ${rpf_tftptimeout}
	setenv tftptimeoutcountmax ${rpf_tftptimeoutcountmax}
	if tftpboot ${scriptaddr} ${macdir}/flash.scr; then
		setenv rpf_job 1
	else
		echo "rpi-flash: no job for ${macdir} on ${serverip}: booting the installed system"
	fi
	setenv tftptimeout 5000
	setenv tftptimeoutcountmax 10
else
	echo "rpi-flash: no network (no address, NIC or server): booting the installed system"
fi

if test "${rpf_job}" = 1; then
	# `source` runs a copy of the script, so loading flash.scr over this one's address is safe.
	echo "rpi-flash: running ${macdir}/flash.scr from ${serverip}"
	source ${scriptaddr}
	# Stage 2 ends in `reset`; if it comes back the card's state is unknown: do not boot it.
	echo "rpi-flash: flash.scr returned without resetting; not booting the installed system"
elif env exists rpf_kernel; then
	# The device tree the firmware handed over (a Pi's start*.elf sets fdt_addr, overlays applied);
	# without one (QEMU without fdt_addr), U-Boot's own copy of the tree it runs on.
	if env exists fdt_addr; then
		setenv rpf_fdt ${fdt_addr}
	else
		setenv rpf_fdt ${fdtcontroladdr}
	fi
	setenv rpf_rd -
	if env exists rpf_initrd; then
		if fatload ${devtype} ${rpf_dev} ${ramdisk_addr_r} ${rpf_initrd}; then
			setenv rpf_rd ${ramdisk_addr_r}:${filesize}
		else
			echo "rpi-flash: initramfs ${rpf_initrd} not found on ${devtype} ${rpf_dev}; booting without it"
		fi
	fi
	if fatload ${devtype} ${rpf_dev} ${kernel_addr_r} ${rpf_kernel}; then
		# A gzip'd arm64 Image (some distributions ship one) is unpacked by booti through
		# kernel_comp_addr_r; a raw Image ignores both. 160 MiB above the kernel is free RAM on
		# every Pi (stage 2's buffers start at 0x0f000000) and under QEMU.
		setenv kernel_comp_size ${filesize}
		env exists kernel_comp_addr_r || setexpr kernel_comp_addr_r ${kernel_addr_r} + 0xa000000
		# Without rpf_bootargs the firmware's /chosen/bootargs (cmdline.txt plus its own) stays.
		env exists rpf_bootargs && setenv bootargs "${rpf_bootargs}"
		echo "rpi-flash: booting ${rpf_kernel} initrd ${rpf_rd} fdt ${rpf_fdt}"
		if test "${rpf_arm64}" = 1; then
			booti ${kernel_addr_r} ${rpf_rd} ${rpf_fdt}
		else
			bootz ${kernel_addr_r} ${rpf_rd} ${rpf_fdt}
		fi
		echo "rpi-flash: the kernel ${rpf_kernel} did not start"
	else
		echo "rpi-flash: kernel ${rpf_kernel} not found on ${devtype} ${rpf_dev}"
	fi
else
	echo "rpi-flash: cannot boot the installed system: no rpf_kernel (rpi-flash.env on ${devtype} ${rpf_dev})"
fi

"""Driver cases: each driver against its simulated sensor on the fake bus."""

import machine
from fakedevices import FakeAdcU16, FakeBME280, FakeSHT31, dht22_bytes
from faketime import FakeTime
from tidegate_node.drivers import SensorError
from tidegate_node.drivers.battery import Battery
from tidegate_node.drivers.bme280 import BME280
from tidegate_node.drivers.dht22 import DHT22
from tidegate_node.drivers.sht31 import SHT31, crc8


def _bus(address, device, time=None):
    board = machine.new_board(time)
    board.i2c_devices[0][address] = device
    return machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21))


def _reason(fn):
    try:
        fn()
    except SensorError as exc:
        return exc.reason
    return "no error"


def case_bme280_datasheet_example():
    time = FakeTime()
    sensor = FakeBME280(adc_t=519888, adc_p=415148, adc_h=28000)
    driver = BME280(_bus(0x76, sensor, time), 0x76, time.sleep_ms)
    reads_before = sensor.reads
    first = driver.read()
    transfers = sensor.reads - reads_before
    second = driver.read()
    return [first, second, sensor.measurements, transfers, time.sleeps]


def case_bme280_sweep():
    out = []
    for adc_t, adc_p, adc_h in ((519888, 415148, 28000), (400000, 300000, 20000), (600000, 450000, 40000),
                                (519888, 415148, 0), (519888, 415148, 65000)):
        driver = BME280(_bus(0x77, FakeBME280(adc_t, adc_p, adc_h, measuring_polls=0)), 0x77)
        out.append([adc_t, adc_p, adc_h, driver.read()])
    return out


def case_bme280_errors():
    def missing():
        BME280(_bus(0x76, FakeBME280()), 0x77)

    def bmp280():
        BME280(_bus(0x76, FakeBME280(chip_id=0x58)), 0x76)

    def never_finishes():
        time = FakeTime()
        driver = BME280(_bus(0x76, FakeBME280(measuring_polls=1000), time), 0x76, time.sleep_ms)
        try:
            driver.read()
        finally:
            waited.append(sum(time.sleeps))

    sensor = FakeBME280()
    driver = BME280(_bus(0x76, sensor), 0x76)
    sensor.fail_next = 1
    bus_error = _reason(driver.read)
    recovered = driver.read()[0]
    waited = []
    return [_reason(missing), _reason(bmp280), _reason(never_finishes), waited, bus_error, recovered]


def case_bme280_no_measurement_yet():
    # Data registers still at their reset value: never report them as a reading.
    sensor = FakeBME280(measuring_polls=0)
    driver = BME280(_bus(0x76, sensor), 0x76)
    sensor.adc_t = 0x80000
    return _reason(driver.read)


def case_sht31_conversions():
    out = []
    for raw_t, raw_h in ((26214, 32768), (0, 0), (65535, 65535), (17628, 20000)):
        driver = SHT31(_bus(0x44, FakeSHT31(raw_t, raw_h)), 0x44)
        out.append([raw_t, raw_h, driver.read()])
    return out


def case_sht31_protocol_with_timing():
    time = FakeTime()
    sensor = FakeSHT31(26214, 32768, time)
    driver = SHT31(_bus(0x44, sensor, time), 0x44, time.sleep_ms)
    values = driver.read()
    return [values, sensor.commands, time.sleeps]


def case_sht31_errors():
    sensor = FakeSHT31()
    driver = SHT31(_bus(0x44, sensor), 0x44)
    sensor.corrupt_crc = True
    crc = _reason(driver.read)
    after = driver.read()
    sensor.fail_next = 1
    bus = _reason(driver.read)
    early = FakeSHT31(time=FakeTime())  # time never advances: NACK on both tries
    no_wait = SHT31(_bus(0x45, early), 0x45)
    return [crc8(b"\xbe\xef"), crc, after, bus, _reason(no_wait.read),
            _reason(lambda: SHT31(_bus(0x44, FakeSHT31()), 0x45))]


def case_dht22():
    board = machine.new_board()
    pin = machine.Pin(4)
    driver = DHT22(pin, machine.dht_readinto)
    out = []
    board.dht[4] = b"\x02\x8c\x01\x5f\xee"  # the datasheet's example: 65.2 %RH, 35.1 degC
    out.append(driver.read())
    board.dht[4] = dht22_bytes(-101, 1000)
    out.append(driver.read())
    board.dht[4] = b"\x02\x8c\x01\x5f\xef"
    out.append(_reason(driver.read))
    board.dht[4] = dht22_bytes(900, 500)
    out.append(_reason(driver.read))
    del board.dht[4]
    out.append(_reason(driver.read))
    out.append(_reason(lambda: DHT22(pin, None)))
    return out


def case_battery():
    board = machine.new_board()
    out = []
    board.adc_uv[34] = 2050000
    out.append(Battery(machine.ADC(machine.Pin(34)), 2.0).read())
    board.adc_uv[34] = 1234567
    out.append(Battery(machine.ADC(machine.Pin(34)), 3.0).read())
    out.append(Battery(FakeAdcU16(1850000), 2.0).read())  # RP2040: read_u16 only
    board.adc_uv[34] = 0
    out.append(_reason(Battery(machine.ADC(machine.Pin(34)), 2.0).read))
    board.adc_uv[34] = OSError(5)
    out.append(_reason(Battery(machine.ADC(machine.Pin(34)), 2.0).read))
    return out
